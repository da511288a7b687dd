"""The train state and the per-device steps: `init_state`, `train_step`, `eval_step`.

The steps are pure, pmap-style per-device functions (axis `parallel.AXIS`, gradients and metrics
averaged with `lax.pmean`); `parallel.data_parallel` runs them on every device under `jax.jit`.
Randomness at step s is a pure function of (seed, s), and per-example randomness (the `random` pixel
permutation) of (seed, s, global example index), so results do not depend on how many devices share
the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from perceiver_jax.training import build, parallel, tasks

# Folded into a step's key to derive independent streams.
_DROPOUT, _EXAMPLES, _EVAL = 1, 2, 3


class TrainState(NamedTuple):
  params: hk.Params
  state: hk.State  # Haiku state, e.g. BatchNorm statistics of the ResNet baseline.
  opt_state: optax.OptState
  step: jax.Array  # int32 []
  rng: jax.Array  # uint32 [2], the run's base key; never advanced, folded with the step instead.


def _keys_at(key, indices):
  """One key per global example index: [len(indices)] keys."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def example_keys(key, start, count):
  """One key per example with global indices start .. start + count - 1: [count] keys."""
  return _keys_at(key, start + jnp.arange(count))


def eval_example_keys(rng, indices):
  """The per-example keys `eval_step` gives the eval examples with these global indices: [B] keys.

  (Only the `random` permutation uses them; tools that re-run single eval examples, such as
  visualize.py, need the same ones.)
  """
  return _keys_at(jax.random.fold_in(rng, _EVAL), indices)


def _local_example_start(first_global_index, local_batch):
  return first_global_index + lax.axis_index(parallel.AXIS) * local_batch


def init_state(config: ml_collections.ConfigDict, model: hk.TransformedWithState, optimizer) -> TrainState:
  """Initial parameters from `config.seed`, identical on every process."""
  inputs = build.dummy_inputs(config, 1)  # [1, *input_shape] (or a mapping): the batch spec says the shape.
  rng = jax.random.PRNGKey(config.seed)
  init_key = jax.random.fold_in(rng, 0)
  keys = example_keys(init_key, 0, 1)
  params, state = model.init(init_key, inputs, is_training=True, example_keys=keys)
  return TrainState(params, state, optimizer.init(params), jnp.zeros([], jnp.int32), rng)


def train_step(
  train_state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model: hk.TransformedWithState,
  optimizer: optax.GradientTransformation,
  num_classes: int,
  label_smoothing: float,
  task: str = tasks.SINGLE_LABEL,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on this device's shard of the global batch (pmap-style, axis `batch`).

  `batch`: of the batch spec (data.spec): `inputs` [b, ...] (or a mapping), optional `input_mask`, `label`
  [b] or [b, K]; the loss and the metrics are the task's (tasks.py).
  """
  inputs, input_mask, labels = batch["inputs"], batch.get("input_mask"), batch["label"]
  local = labels.shape[0]
  global_batch = local * lax.psum(1, parallel.AXIS)
  step_key = jax.random.fold_in(train_state.rng, train_state.step)
  keys = example_keys(
    jax.random.fold_in(step_key, _EXAMPLES),
    _local_example_start(train_state.step * global_batch, local),
    local,
  )
  dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, _DROPOUT), lax.axis_index(parallel.AXIS))

  def loss_fn(params):
    logits, new_state = model.apply(
      params,
      train_state.state,
      dropout_key,
      inputs,
      is_training=True,
      input_mask=input_mask,
      example_keys=keys,
    )
    loss = jnp.mean(tasks.loss(task, logits, labels, num_classes, label_smoothing))
    return loss, (logits, new_state)

  # Differentiate with respect to per-device (varying) parameters: under shard_map the gradient of a
  # replicated input would otherwise be summed over devices implicitly. This keeps the pmap contract:
  # per-device gradients, averaged explicitly. With equal shards the mean of means is the global mean.
  params = lax.pcast(train_state.params, parallel.AXIS, to="varying")
  (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  grads = lax.pmean(grads, parallel.AXIS)
  new_state = lax.pmean(new_state, parallel.AXIS)
  updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
  params = optax.apply_updates(train_state.params, updates)
  metrics = {"loss": loss, **tasks.train_metrics(task, logits, labels), "grad_norm": optax.tree.norm(grads)}
  metrics = lax.pmean(metrics, parallel.AXIS)
  new = TrainState(params, new_state, opt_state, train_state.step + 1, train_state.rng)
  return new, metrics


def eval_step(
  train_state: TrainState,
  batch: dict[str, jax.Array],
  batch_index: jax.Array,
  *,
  model: hk.TransformedWithState,
  num_classes: int,
  task: str = tasks.SINGLE_LABEL,
  gather_scores: bool = False,
  windows: int | None = None,
) -> dict[str, jax.Array]:
  """Sums over the real examples of one eval batch (`eval_mask` True, not padding), across all devices.

  With `gather_scores`, also the whole global batch's `scores` [B, K], `label` and `eval_mask`, gathered
  to every device (for metrics of the whole split, such as the mAP, and for saved predictions).
  `windows` (spec.eval_windows): each example is W windows [b, W, ...], scored as b W examples (each with
  its example's key) and averaged into the example's scores (tasks.average_windows).
  """
  inputs, input_mask, labels = batch["inputs"], batch.get("input_mask"), batch["label"]
  local = labels.shape[0]
  global_batch = local * lax.psum(1, parallel.AXIS)
  keys = eval_example_keys(
    train_state.rng, _local_example_start(batch_index * global_batch, local) + jnp.arange(local)
  )
  if windows is not None:  # [b, W, ...] -> [b W, ...]
    flat = lambda x: x.reshape(local * windows, *x.shape[2:])  # noqa: E731
    inputs, input_mask = jax.tree.map(flat, (inputs, input_mask))
    keys = jnp.repeat(keys, windows, axis=0)
  logits, _ = model.apply(
    train_state.params,
    train_state.state,
    None,
    inputs,
    is_training=False,
    input_mask=input_mask,
    example_keys=keys,
  )
  if windows is not None:
    logits = tasks.average_windows(task, logits.reshape(local, windows, -1))  # [b, K]
  weight = batch["eval_mask"].astype(jnp.float32)
  sums = lax.psum(tasks.eval_sums(task, logits, labels, weight, num_classes), parallel.AXIS)
  if gather_scores:
    gathered = {"scores": tasks.scores(task, logits), "label": labels, "eval_mask": batch["eval_mask"]}
    sums["gathered"] = jax.tree.map(parallel.gather, gathered)  # [global batch, ...]
  return sums


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
