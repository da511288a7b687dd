"""Training and evaluation: the state, the per-device steps, and the loop.

The steps are pure, pmap-style per-device functions (axis `parallel.AXIS`, gradients and metrics
averaged with `lax.pmean`); `parallel.data_parallel` runs them on every device under `jax.jit`.
Randomness at step s is a pure function of (seed, s), and per-example randomness (the `random` pixel
permutation) of (seed, s, global example index), so results do not depend on how many devices share
the batch.
"""

from __future__ import annotations

import functools
import io
import json
import math
import pathlib
import shutil
import tempfile
import time
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from perceiver_jax import config_args, data
from perceiver_jax.data import spec
from perceiver_jax.models.checks import check_positive
from perceiver_jax.training import build, checkpoint, optim, parallel, run_files, tasks, warm_start
from perceiver_jax.training.metric_writer import MetricWriter

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
) -> dict[str, jax.Array]:
  """Sums over the real examples of one eval batch (`eval_mask` True, not padding), across all devices.

  With `gather_scores`, also the whole global batch's `scores` [B, K], `label` and `eval_mask`, gathered
  to every device (for metrics of the whole split, such as the mAP, and for saved predictions).
  """
  inputs, input_mask, labels = batch["inputs"], batch.get("input_mask"), batch["label"]
  local = labels.shape[0]
  global_batch = local * lax.psum(1, parallel.AXIS)
  keys = eval_example_keys(
    train_state.rng, _local_example_start(batch_index * global_batch, local) + jnp.arange(local)
  )
  logits, _ = model.apply(
    train_state.params,
    train_state.state,
    None,
    inputs,
    is_training=False,
    input_mask=input_mask,
    example_keys=keys,
  )
  weight = batch["eval_mask"].astype(jnp.float32)
  sums = lax.psum(tasks.eval_sums(task, logits, labels, weight, num_classes), parallel.AXIS)
  if gather_scores:
    gathered = {"scores": tasks.scores(task, logits), "label": labels, "eval_mask": batch["eval_mask"]}
    sums["gathered"] = jax.tree.map(parallel.gather, gathered)  # [global batch, ...]
  return sums


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
          eval_step, model=self.model, num_classes=num_classes, task=self.task, gather_scores=gather
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


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the fields the loop relies on; model fields are checked by the modules themselves."""
  t = config.train
  names = ("global_batch_size", "eval_batch_size", "log_every", "eval_every")
  check_positive("train.", **{name: t[name] for name in names})
  if (t.num_steps is None) == (t.num_epochs is None):
    raise ValueError(f"Set exactly one of train.num_steps={t.num_steps} and train.num_epochs={t.num_epochs}.")
  if t.num_steps is not None:
    check_positive("train.", num_steps=t.num_steps)
  if t.num_epochs is not None and t.num_epochs <= 0:
    raise ValueError(f"train.num_epochs={t.num_epochs!r} must be positive.")
  if t.profile_steps < 0:
    raise ValueError(f"train.profile_steps={t.profile_steps} must be 0 (off) or a number of steps to trace.")
  if not 0.0 <= t.label_smoothing < 1.0:
    raise ValueError(f"train.label_smoothing={t.label_smoothing} must be in [0, 1).")
  build.front_end_class(config)  # A known front end.
  spec.batch_spec(config, 1)  # Inputs the dataset section describes, and a known task.
  if config.precision not in ("float32", "bfloat16"):
    raise ValueError(f"precision={config.precision!r} must be 'float32' or 'bfloat16'.")


def schedule_length(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(steps per epoch, total steps) of the run; an epoch is a pass over the training images.

  With MixUp/CutMix a step reads two images per example (`data.images_per_example`), so N / (2 B) steps.
  """
  t = config.train
  examples = config.dataset.num_train_examples or data.num_examples(config, "train")
  steps_per_epoch = max(1, math.ceil(examples / (t.global_batch_size * data.images_per_example(config))))
  total = t.num_steps if t.num_steps is not None else int(round(t.num_epochs * steps_per_epoch))
  return steps_per_epoch, total


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


class ConfigChangeRefused(ValueError):
  """A resume whose config changes the experiment of the run in the workdir."""


def check_resume(
  config: ml_collections.ConfigDict, workdir: str, accept_config_change: bool = False
) -> dict[str, Any]:
  """The config.json to write for training `config` in `workdir`; reads the workdir, writes nothing.

  A run already in `workdir` may be resumed with changes to RESUMABLE_CHANGES (its length, logging, eval
  and checkpoint intervals); other changes raise ConfigChangeRefused listing them, unless
  `accept_config_change`. Every change is recorded in the returned JSON's `config_changes` list.

  Without config.json, the config saved with the newest checkpoint is checked against instead.

  Raises:
    ConfigChangeRefused: the config changes the experiment and the change is not accepted.
    run_files.RunFileError: the workdir's config.json cannot be read.
  """
  new = json.loads(config.to_json_best_effort())
  path = epath.Path(workdir) / run_files.CONFIG
  old = run_files.read_json(path) if path.exists() else checkpoint.saved_config(workdir)
  if old is None:
    return new
  if not isinstance(old, dict):
    raise run_files.RunFileError(f"{path} holds no config (a JSON {type(old).__name__}); restore it.")
  changes = run_files.config_diff(old, new)
  refused = run_files.experiment_changes(changes)
  if refused and not accept_config_change:
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
    raise ConfigChangeRefused(
      f"The run in {workdir} is another experiment ({listed}); train into a new workdir, or resume with "
      "--accept_config_change to continue it with these changes (recorded in its config.json)."
    )
  history = list(old.get(run_files.CONFIG_CHANGES) or [])
  if changes:
    logging.warning(
      "Resuming %s with changed config fields: %s.",
      workdir,
      ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()),
    )
    history.append({"changes": {k: list(v) for k, v in changes.items()}, "accepted": sorted(refused)})
  if history:
    new[run_files.CONFIG_CHANGES] = history
  return new


def _fetch_finite(pending: list[tuple[int, Any]], latest_checkpoint: int | None) -> list[dict[str, float]]:
  """The metrics of `pending` (step, metrics) on the host; FloatingPointError at a non-finite one.

  A finite loss and gradient norm at every step mean finite optimizer updates, so the state about to be
  saved descends from finite steps only (`checkpoint.save` checks the state itself as well).
  """
  values = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, values, strict=True):
    for key, name in (("loss", "training loss"), ("grad_norm", "gradient norm")):
      if not math.isfinite(float(m[key])):
        kept = (
          "no checkpoint was saved"
          if latest_checkpoint is None
          else f"the last checkpoint, of step {latest_checkpoint}, is kept as it was"
        )
        raise FloatingPointError(
          f"Non-finite {name} {float(m[key])} at step {step}; {kept}. Lower "
          "optimizer.learning_rate or enable clipping (optimizer.clip_global_norm)."
        )
  return values


class _StepProfiler:
  """Traces `count` train steps with jax.profiler, from the one after the first (compiling) step.

  The trace is written locally, then copied into `workdir/plugins/profile/<run>/` through epath (any
  workdir, gs:// too), where `tensorboard --logdir=WORKDIR` shows it in the profile plugin. Process 0 only.
  A profiler never ends a run: where tracing cannot start (or its trace cannot be written) one line says
  why and training goes on. A libtpu that is not the one jax pins crashes the process in start_trace
  (its profiler plugin does not match jaxlib's), so then the trace does not start at all.
  """

  def __init__(self, workdir: str, count: int, start: int, total: int):
    self.workdir, self.first, self.last = workdir, start + 2, min(start + 1 + count, total)
    self.active = count > 0 and jax.process_index() == 0 and self.first <= self.last
    self._local = None

  @staticmethod
  def _crashing_plugin(platforms: str | None) -> str | None:
    """Why jax.profiler would crash this process (a loaded libtpu plugin jax does not pin), or None.

    `platforms`: jax.config.jax_platforms; JAX loads the TPU plugin unless it names others only.
    """
    from perceiver_jax.training import toolchain

    if platforms and "tpu" not in platforms.split(","):
      return None
    return toolchain.libtpu_mismatch()

  @staticmethod
  def _first_line(error: Exception) -> str:
    """`error`'s first line (its type when it has no message), for a one-line log."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__

  def before(self, step: int) -> None:
    if not (self.active and step == self.first):
      return
    self.active = False
    if crash := self._crashing_plugin(jax.config.jax_platforms):
      logging.warning("Not profiling (train.profile_steps): %s, whose profiler would crash this run.", crash)
      return
    local = tempfile.mkdtemp(prefix="perceiver_profile_")
    try:
      jax.profiler.start_trace(local)
    except Exception as e:  # noqa: BLE001  Any reason: the run trains on without a trace.
      shutil.rmtree(local, ignore_errors=True)
      logging.warning(
        "Not profiling (train.profile_steps): the trace did not start (%s).", self._first_line(e)
      )
      return
    self._local = local

  def after(self, step: int, train_state) -> None:
    if self._local is not None and step >= self.last:
      jax.block_until_ready(train_state)
      self.close()

  def close(self) -> None:
    if self._local is None:
      return
    local, self._local = pathlib.Path(self._local), None  # A local temporary directory.
    try:
      jax.profiler.stop_trace()
      for source in sorted(p for p in local.rglob("*") if p.is_file()):
        target = epath.Path(self.workdir) / source.relative_to(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    except Exception as e:  # noqa: BLE001  A trace is not worth a run.
      logging.warning("No profile written (train.profile_steps): %s", self._first_line(e))
      return
    finally:
      shutil.rmtree(local, ignore_errors=True)
    logging.info("Profiled steps %d..%d into %s/plugins/profile.", self.first, self.last, self.workdir)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  tensorboard: bool = True,
  accept_config_change: bool = False,
  hold_sigterm: bool = False,
) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint, then evaluates.

  Every process calls this; process 0 writes config.json, metrics.jsonl, TensorBoard events (unless
  `tensorboard` is False, which also spares importing TensorFlow) and, once the run is finished,
  results.json. Checkpoints are saved every `config.checkpoint.every` steps, at the
  end, and at the first step boundary after a SIGTERM: then the run stops and returns
  `{'preempted': True, 'step': ...}`, and calling this again resumes it exactly where it stopped.

  Before anything in `workdir` is written: a resume whose config changes the experiment is refused
  (`check_resume`; `accept_config_change` lets it go on, recorded in config.json), and a workdir in use
  by another live run is refused (`run_files.WorkdirLock`, held by process 0 until this returns).
  `hold_sigterm` (for entry points, whose process ends with the run): after a stop by SIGTERM, later ones
  stay harmless (`checkpoint.PreemptionWatcher(hold_after_stop=True)`).
  """
  trainer = Trainer(config)
  every, keep = config.checkpoint.every, config.checkpoint.keep
  check_positive("checkpoint.", every=every, keep=keep)
  root = epath.Path(workdir)
  if root.exists() and not root.is_dir():
    raise NotADirectoryError(
      f"The workdir {workdir} is a file; pass a directory (new or a run's) as --workdir."
    )
  is_lead = jax.process_index() == 0
  # The restore target: tracing the model's init checks the model's values before the workdir is touched.
  target = checkpoint.abstract_state(
    functools.partial(init_state, config, trainer.model, trainer.optimizer), parallel.replicated(trainer.mesh)
  )
  # Process 0 reads the workdir and takes its lock; every process learns whether that worked, so that all
  # of them stop before anything in the workdir is written.
  config_json, lock, error = None, run_files.WorkdirLock(workdir), None
  if is_lead:
    try:
      config_json = check_resume(config, workdir, accept_config_change)
      lock.acquire()
    except (ValueError, RuntimeError, OSError) as e:
      error = e
  if not checkpoint.all_processes(error is None):
    raise error or RuntimeError(f"Process 0 could not start the run in {workdir}; see its log.")
  # The watcher spans the wait for the last save and the lock's release: a second SIGTERM (or Ctrl-C)
  # meanwhile is logged, and cannot kill the save the way the default handler would.
  with checkpoint.PreemptionWatcher(hold_after_stop=hold_sigterm) as watcher:
    try:
      writer = MetricWriter(workdir, tensorboard=tensorboard)  # Reads metrics.jsonl: fails before writing.
      manager = checkpoint.make_manager(workdir, keep)
      try:
        try:
          return _train(trainer, workdir, writer, manager, watcher, config_json, target)
        finally:
          checkpoint.close(manager)  # Waits for a save in flight: the newest checkpoint is then complete.
          writer.close()
      except Exception as e:
        if not checkpoint.disk_full(e):
          raise
        raise OSError(
          f"The disk of {workdir} is full ({' '.join(str(e).split())[:160]}); free space and run again: it "
          "resumes from the newest whole checkpoint."
        ) from e
    finally:
      lock.release()


def _unlogged(fetched: list[dict[str, Any]]) -> list[dict[str, list]]:
  """The fetched, not yet logged metrics as JSON: [{name: [value, dtype]}], values exact."""
  return [{k: [float(v), np.asarray(v).dtype.str] for k, v in m.items()} for m in fetched]


def _lead_says(value: bool) -> bool:
  """Process 0's `value`, on every process (a collective when there are several)."""
  if jax.process_count() == 1:
    return value
  return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _evaluate_and_log(trainer: Trainer, train_state, step: int, writer, history) -> dict[str, Any]:
  eval_metrics = trainer.evaluate(train_state)
  writer.write(step, {f"eval_{k}": v for k, v in tasks.scalars(eval_metrics).items()})
  history.append({"step": step, **tasks.scalars(eval_metrics)})
  logging.info(
    "eval at step %d: %s over %d examples", step, tasks.describe(eval_metrics), eval_metrics["count"]
  )
  return eval_metrics


def _train(trainer: Trainer, workdir: str, writer, manager, watcher, config_json, target) -> dict[str, Any]:
  config, t, total = trainer.config, trainer.config.train, trainer.total_steps
  is_lead = jax.process_index() == 0
  logging.info(
    "Training %s on %s for %d steps (%d per epoch) on %d devices of %d processes.",
    config.model_name,
    config.dataset.name,
    total,
    trainer.steps_per_epoch,
    jax.device_count(),
    jax.process_count(),
  )
  train_state, start = checkpoint.restore_latest(manager, target, move_aside_corrupt=True)
  if start is not None and start > total:  # Before config.json is written: the run stays as it was.
    raise ValueError(
      f"The run in {workdir} has trained {start} steps, more than this config's {total} "
      f"(train.num_steps={t.num_steps}, train.num_epochs={t.num_epochs}); evaluate it with "
      "experiments/evaluate.py, resume it with at least as many steps, or train into a new workdir."
    )
  if is_lead:  # After the restore: a checkpoint of another shape (CheckpointMismatch) leaves config.json be.
    run_files.write_json(epath.Path(workdir) / run_files.CONFIG, config_json)
  fetched = []  # Metrics on the host, not yet logged.
  if train_state is None:
    train_state, start = trainer.init(), 0
    if t.init_from:  # A new run that starts from another run's parameters (training/warm_start.py).
      source = load_run(t.init_from, sharding=parallel.replicated(trainer.mesh))
      train_state = warm_start.start_from(
        train_state,
        source,
        trainer.optimizer,
        t.init_from,
        config.model_name,
        parallel.replicated(trainer.mesh),
      )
  else:
    logging.info("Resuming from the checkpoint of step %d in %s.", start, manager.directory)
    # The metrics of the steps since the last log line, saved with the checkpoint: the next log line
    # averages the same steps as an uninterrupted run's.
    saved = checkpoint.step_metadata(manager, start).get(checkpoint.UNLOGGED) or []
    fetched = [{k: np.asarray(v, dtype) for k, (v, dtype) in m.items()} for m in saved]
  history = writer.keep_until(start)
  num_params = count_params(train_state.params)
  logging.info("Parameters: %d", num_params)
  batches = parallel.prefetch(data.train_batches(config, start_step=start), trainer.mesh)

  pending = []  # (step, metrics) on the devices.
  tick, tick_step, run_start = time.perf_counter(), start, time.perf_counter()
  eval_metrics = None
  if start and (start % t.eval_every == 0 or start == total):
    # The eval due at the restored step: logged before the run stopped, or run now (a run stopped by a
    # signal or killed during that eval), so that metrics.jsonl and the history hold it once.
    # Process 0 alone reads metrics.jsonl; every process follows its verdict (evaluating is collective).
    if not _lead_says(any(h["step"] == start for h in history)):
      eval_metrics = _evaluate_and_log(trainer, train_state, start, writer, history)
  profiler = _StepProfiler(workdir, t.profile_steps, start, total)
  for step in range(start + 1, total + 1):
    profiler.before(step)
    train_state, metrics = trainer.train_step(train_state, next(batches))
    profiler.after(step, train_state)
    pending.append((step, metrics))
    stop = watcher.stop_requested(step)
    save = step % config.checkpoint.every == 0 or step == total or stop
    log = step % t.log_every == 0 or step == total
    if save or log:
      # Checked before every save, so a diverged state never replaces a good checkpoint.
      fetched += _fetch_finite(pending, manager.latest_step())
      pending = []
    if log:
      means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      fetched = []
      now = time.perf_counter()
      steps_per_s = (step - tick_step) / (now - tick)
      tick, tick_step = now, step
      scalars = {
        **{f"train_{k}": v for k, v in means.items() if k != "grad_norm"},  # The task's (tasks.py).
        "grad_norm": means["grad_norm"],
        "learning_rate": float(trainer.schedule(step - 1)),
        "examples_per_s": steps_per_s * t.global_batch_size,
      }
      writer.write(step, scalars)
      logging.info(
        "step %d/%d %s lr %.2e %.0f examples/s, %.0f s left",
        step,
        total,
        " ".join(f"{k} {means[k]:.4f}" for k in means if k != "grad_norm"),
        scalars["learning_rate"],
        scalars["examples_per_s"],
        (total - step) / max(steps_per_s, 1e-9),
      )
    if save:
      metadata = {checkpoint.UNLOGGED: _unlogged(fetched)}
      if config_json is not None:
        metadata[checkpoint.CONFIG] = config_json
      checkpoint.save(manager, step, train_state, metadata)
    if stop:
      profiler.close()
      manager.wait_until_finished()  # "saved" only once it is.
      logging.warning(
        "Preempted: saved the checkpoint of step %d in %s and stopped; run again to resume.",
        step,
        manager.directory,
      )
      return {"preempted": True, "step": step, "params": num_params}
    if step % t.eval_every == 0 or step == total:
      eval_metrics = _evaluate_and_log(trainer, train_state, step, writer, history)

  if eval_metrics is None:  # Nothing left to train: evaluate what was restored.
    eval_metrics = trainer.evaluate(train_state)
  step = int(jax.device_get(train_state.step))
  checksum = checkpoint.params_checksum(train_state.params)
  logging.info("Process %d: params_checksum %s at step %d.", jax.process_index(), checksum, step)
  results = {
    "eval": eval_metrics,
    "step": step,
    "params": num_params,
    "params_checksum": checksum,
    "train_seconds": time.perf_counter() - run_start,
    "history": history,
  }
  if is_lead:
    run_files.write_json(epath.Path(workdir) / run_files.RESULTS, results)
  return results


class Run(NamedTuple):
  """A run loaded from its workdir: its config and the train state of one checkpoint."""

  config: ml_collections.ConfigDict
  state: TrainState  # Arrays on this process's first device, usable without a mesh.
  step: int


def load_run(workdir: str, step: int | None = None, sharding: Sharding | None = None) -> Run:
  """The config and the train state of the latest (or the given) checkpoint of the run in `workdir`.

  By default the arrays live on this process's first device, so they serve any single-device use
  without a mesh; `sharding` lays them out otherwise (e.g. replicated over a mesh).

  Raises:
    FileNotFoundError: no config.json in `workdir`, or no readable checkpoint (of `step`) there.
  """
  config = checkpoint.load_config(workdir)
  model = build.make_model(config)
  # The optimizer's state has the same structure whatever the schedule's length.
  optimizer, _ = optim.make_optimizer(config, 1, 1)
  target = checkpoint.abstract_state(
    lambda: init_state(config, model, optimizer),
    sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
  )
  manager = (
    checkpoint.make_manager(workdir, read_only=True) if checkpoint.directory(workdir).exists() else None
  )
  available = list(manager.all_steps()) if manager else []
  if step is not None and step not in available:
    raise FileNotFoundError(f"No checkpoint of step {step} in {workdir}; it has steps {available}.")
  state, restored, tried = None, None, set()
  while manager and set(available) - tried:
    state, restored = checkpoint.restore_latest(manager, target, steps=None if step is None else [step])
    if state is not None or step is not None:
      break
    # A run training meanwhile may have deleted the steps read (checkpoint.keep) and saved newer ones.
    tried |= set(available)
    manager.reload()
    available = list(manager.all_steps())
    if set(available) - tried:
      logging.warning("New checkpoints appeared meanwhile (steps %s); trying the newest.", available)
  if manager:
    manager.close()
  if state is None:
    why = (
      "none of them could be read (see the warnings above); restore them from a copy"
      if tried or step is not None
      else "the run has not saved one yet (it saves every config.checkpoint.every steps, at the end and "
      "when preempted)"
    )
    raise FileNotFoundError(
      f"No readable checkpoint in {checkpoint.directory(workdir)} (steps found: {sorted(tried) or available}"
      f"); {why}."
    )
  return Run(config, state, restored)


PREDICTIONS = "predictions.npz"


def eval_config(workdir: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The config of the run in `workdir` with `overrides` ({dotted field: value}) of run_files.EVAL_CHANGES.

  Raises:
    ValueError: an override names a field that would change the model or its data, or no field.
  """
  config = checkpoint.load_config(workdir)
  for key, value in (overrides or {}).items():
    if key not in run_files.EVAL_CHANGES:
      allowed = ", ".join(f"--config.{k}" for k in run_files.EVAL_CHANGES)
      raise ValueError(
        f"--config.{key} would change the model or the data the checkpoint was trained for; evaluation "
        f"takes only {allowed}."
      )
    config_args.set_path(config, key, value)
  return config


def evaluate_run(
  workdir: str, overrides: dict[str, Any] | None = None, save_predictions: bool = False
) -> dict[str, Any]:
  """Evaluates the latest checkpoint of the run in `workdir`; process 0 writes eval_results.json.

  `overrides`: {dotted field: value} of run_files.EVAL_CHANGES (eval_config). `save_predictions`: process 0
  also writes `predictions.npz` into the workdir: `scores` [N, K] and `labels` ([N] single-label, [N, K]
  multi-label) of every eval example, each once.

  Raises:
    FileNotFoundError: `workdir` holds no run or no readable checkpoint.
    ValueError: an override outside run_files.EVAL_CHANGES.
  """
  trainer = Trainer(eval_config(workdir, overrides))
  run = load_run(workdir, sharding=parallel.replicated(trainer.mesh))
  predictions = {} if save_predictions else None
  eval_metrics = trainer.evaluate(run.state, predictions)
  if save_predictions and jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, scores=predictions["scores"], labels=predictions["labels"])
    (epath.Path(workdir) / PREDICTIONS).write_bytes(buffer.getvalue())
  results = {
    "eval": eval_metrics,
    "step": run.step,
    "params_checksum": checkpoint.params_checksum(run.state.params),
  }
  if overrides:
    results["config_overrides"] = dict(overrides)
  if jax.process_index() == 0:
    run_files.write_json(epath.Path(workdir) / "eval_results.json", results)
  return results
