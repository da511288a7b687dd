"""`Trainer`: the compiled steps of one config on one mesh, and the evaluation over the whole eval split."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_jax import data
from perceiver_jax.data import spec
from perceiver_jax.training import build, optim, parallel, tasks
from perceiver_jax.training.config_checks import schedule_length, validate_config
from perceiver_jax.training.steps import TrainState, eval_step, init_state, train_step


class Trainer:
  """The compiled steps of one config on one mesh; what the loop, evaluation and tools share."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    mesh=None,
    total_steps: int | None = None,
    platform: str | None = None,
  ):
    """`platform`: whose kernels the model is traced with (build.make_model); None: the mesh's devices'."""
    validate_config(config)
    self.config = config
    self.mesh = mesh or parallel.make_mesh()
    for name in ("global_batch_size", "eval_batch_size"):
      if config.train[name] % self.mesh.size:
        raise ValueError(
          f"train.{name}={config.train[name]} must be a multiple of the {self.mesh.size} devices."
        )
    self.model = build.make_model(config, platform or self.mesh.devices.flat[0].platform)
    self.steps_per_epoch, self.total_steps = (
      schedule_length(config) if total_steps is None else (1, total_steps)
    )
    self.optimizer, self.schedule = optim.make_optimizer(config, self.steps_per_epoch, self.total_steps)
    num_classes = config.dataset.num_classes
    self.task = spec.task(config)
    rep, shard = parallel.REPLICATED, parallel.SHARDED
    self.train_step = parallel.data_parallel(
      functools.partial(
        train_step,
        model=self.model,
        optimizer=self.optimizer,
        num_classes=num_classes,
        label_smoothing=config.train.label_smoothing,
        task=self.task,
      ),
      self.mesh,
      in_specs=(rep, shard),
      out_specs=(rep, rep),
      donate_argnums=(0,),
    )
    self.eval_step, self.scoring_eval_step = (
      parallel.data_parallel(
        functools.partial(
          eval_step,
          model=self.model,
          num_classes=num_classes,
          task=self.task,
          gather_scores=gather,
          windows=spec.eval_windows(config),
        ),
        self.mesh,
        in_specs=(rep, shard, rep),
        out_specs=rep,
      )
      for gather in (tasks.needs_scores(self.task), True)
    )

  def init(self) -> TrainState:
    init = jax.jit(
      functools.partial(init_state, self.config, self.model, self.optimizer),
      out_shardings=parallel.replicated(self.mesh),
    )
    return init()

  def evaluate(self, train_state: TrainState, predictions: dict | None = None) -> dict[str, Any]:
    """The task's metrics over the whole eval split, every example counted exactly once.

    Single-label: top1, top5, loss; multi-label: mAP, loss, per_class_ap (tasks.py); and count. A dict
    passed as `predictions` receives every real eval example's `scores` [N, K] and `labels` ([N] or [N, K]).
    """
    step = self.eval_step if predictions is None else self.scoring_eval_step
    totals, gathered = None, []
    for index, batch in enumerate(parallel.prefetch(data.eval_batches(self.config), self.mesh)):
      sums = step(train_state, batch, jnp.int32(index))
      if "gathered" in sums:
        gathered.append(jax.device_get(sums.pop("gathered")))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
      raise ValueError("The eval split is empty; check dataset.eval_split.")
    scores = labels = None
    if gathered:
      real = np.concatenate([g["eval_mask"] for g in gathered])  # Padding examples left out.
      scores = np.concatenate([g["scores"] for g in gathered])[real]
      labels = np.concatenate([g["label"] for g in gathered])[real]
      if predictions is not None:
        predictions.update(scores=scores, labels=labels)
    return tasks.summarize(self.task, jax.device_get(totals), scores, labels)
