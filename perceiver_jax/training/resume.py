"""The resume policy: which config changes a run in a workdir may be resumed with (`check_resume`)."""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from perceiver_jax.training import checkpoint, run_files


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
