"""The training loop: `train_and_evaluate` trains a config in a workdir, resuming it, then evaluates.

Its parts live by concern: the state and the per-device steps in `steps.py`, the compiled steps of a
config on a mesh in `trainer.py`, the config checks in `config_checks.py`, the resume policy in
`resume.py`, the profiler in `profiler.py`, and reading a run back (`load_run`, `evaluate_run`) in
`runs.py`. Their names stay importable from here, where the tests and tools have always found them.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from perceiver_jax import data
from perceiver_jax.models.checks import check_positive
from perceiver_jax.training import checkpoint, parallel, run_files, tasks, warm_start
from perceiver_jax.training.config_checks import schedule_length, validate_config
from perceiver_jax.training.metric_writer import MetricWriter
from perceiver_jax.training.profiler import StepProfiler
from perceiver_jax.training.resume import ConfigChangeRefused, check_resume
from perceiver_jax.training.runs import PREDICTIONS, Run, eval_config, evaluate_run, load_run
from perceiver_jax.training.steps import (
  _EVAL,
  TrainState,
  count_params,
  eval_example_keys,
  eval_step,
  example_keys,
  init_state,
  train_step,
)
from perceiver_jax.training.trainer import Trainer

_StepProfiler = StepProfiler  # Its name before the split (tests/test_toolchain.py).
__all__ = [
  "PREDICTIONS",
  "ConfigChangeRefused",
  "Run",
  "TrainState",
  "Trainer",
  "_EVAL",
  "check_resume",
  "count_params",
  "eval_config",
  "eval_example_keys",
  "eval_step",
  "evaluate_run",
  "example_keys",
  "init_state",
  "load_run",
  "schedule_length",
  "train_and_evaluate",
  "train_step",
  "validate_config",
]


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


def _restore_or_start(trainer: Trainer, workdir: str, manager, config_json, target):
  """(train state, its step, metrics fetched but not logged): the latest checkpoint's, else a new run's.

  Process 0 writes config.json once the restore has worked.
  """
  config, t, total = trainer.config, trainer.config.train, trainer.total_steps
  is_lead = jax.process_index() == 0
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
  return train_state, start, fetched


def _log_train(
  trainer: Trainer, writer, step: int, fetched: list[dict[str, Any]], steps_per_s: float
) -> None:
  """Writes and logs the means of the `fetched` steps' metrics, the learning rate and the throughput."""
  t, total = trainer.config.train, trainer.total_steps
  means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
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


def _train(trainer: Trainer, workdir: str, writer, manager, watcher, config_json, target) -> dict[str, Any]:
  config, t, total = trainer.config, trainer.config.train, trainer.total_steps
  logging.info(
    "Training %s on %s for %d steps (%d per epoch) on %d devices of %d processes.",
    config.model_name,
    config.dataset.name,
    total,
    trainer.steps_per_epoch,
    jax.device_count(),
    jax.process_count(),
  )
  train_state, start, fetched = _restore_or_start(trainer, workdir, manager, config_json, target)
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
  profiler = StepProfiler(workdir, t.profile_steps, start, total)
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
      now = time.perf_counter()
      steps_per_s = (step - tick_step) / (now - tick)
      tick, tick_step = now, step
      _log_train(trainer, writer, step, fetched, steps_per_s)
      fetched = []
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
  return _finish(workdir, train_state, eval_metrics, num_params, time.perf_counter() - run_start, history)


def _finish(workdir: str, train_state, eval_metrics, num_params: int, train_seconds: float, history):
  """The run's results (results.json, which process 0 writes), with the parameters' checksum."""
  step = int(jax.device_get(train_state.step))
  checksum = checkpoint.params_checksum(train_state.params)
  logging.info("Process %d: params_checksum %s at step %d.", jax.process_index(), checksum, step)
  results = {
    "eval": eval_metrics,
    "step": step,
    "params": num_params,
    "params_checksum": checksum,
    "train_seconds": train_seconds,
    "history": history,
  }
  if jax.process_index() == 0:
    run_files.write_json(epath.Path(workdir) / run_files.RESULTS, results)
  return results
