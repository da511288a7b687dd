"""A finished or stopped run read back from its workdir: `load_run` (its config and a checkpoint's state)
and `evaluate_run` (what experiments/evaluate.py runs: eval_results.json, predictions.npz).
"""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Sharding

from perceiver_jax import config_args
from perceiver_jax.training import build, checkpoint, optim, parallel, run_files
from perceiver_jax.training.steps import TrainState, init_state
from perceiver_jax.training.trainer import Trainer


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
