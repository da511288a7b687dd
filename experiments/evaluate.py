"""Evaluates the latest checkpoint of a run: `python experiments/evaluate.py --workdir=W`.

Reads the run's config from W/config.json, writes W/eval_results.json and prints the metrics. Takes the
same multi-process flags as experiments/train.py, `--config.a.b=value` for what may differ at evaluation
(run_files.EVAL_CHANGES: the data_dir, the eval split and batch size, attention switches; anything that
would change the model is refused in one line), and `--save_predictions` to write W/predictions.npz
(`scores` [N, K] and `labels` of every eval example).
"""

import ast
import json

from absl import flags

from perceiver_jax import cli, config_args

cli.sigterm_in_one_line()  # Before JAX (and libtpu) load: a SIGTERM while importing ends in one line.

from perceiver_jax.training import distributed, train  # noqa: E402

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory, as given to experiments/train.py.", required=True
)
_SAVE_PREDICTIONS = flags.DEFINE_bool(
  "save_predictions", False, "Also write predictions.npz (scores and labels of every eval example)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
_LOCAL_DEVICES = flags.DEFINE_integer("local_device_count", None, "CPU devices per process (CPU runs).")
_INIT_TIMEOUT = flags.DEFINE_integer(
  "initialization_timeout",
  distributed.DEFAULT_INITIALIZATION_TIMEOUT,
  "Seconds the processes of a multi-process run wait for each other at start-up.",
)

_OVERRIDES: dict = {}


def _parse(argv: list[str]) -> list[str]:
  """absl's parsing of every flag but the `--config.a.b=value` overrides, which are kept for main."""
  rest, overrides = cli.split_overrides(argv)
  _OVERRIDES.update({key: config_args.parse_value(value) for key, value in overrides.items()})
  return flags.FLAGS(rest)


def main(argv):
  del argv
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _LOCAL_DEVICES.value, _INIT_TIMEOUT.value
  )
  if distributed.single_process_backend():  # libtpu took SIGTERM over as it loaded: take it back.
    cli.sigterm_in_one_line()
  # The overrides too: processes evaluating with different eval batch sizes would wait for each other.
  overrides = {f"--config.{k}": repr(v) for k, v in _OVERRIDES.items()}
  distributed.check_same_config(None, flags={"--workdir": _WORKDIR.value, **overrides})
  with distributed.naming_lost_processes():
    results = train.evaluate_run(_WORKDIR.value, _OVERRIDES, save_predictions=_SAVE_PREDICTIONS.value)
  print(json.dumps(results, indent=2, sort_keys=True))


_OVERRIDES: dict = {}


def _parse(argv: list[str]) -> list[str]:
  """absl's parsing of argv but the `--config.a.b=v` overrides, which go to `_OVERRIDES`."""
  rest = []
  for arg in argv:
    if arg.startswith("--config."):
      key, _, value = arg[len("--config.") :].partition("=")
      try:
        _OVERRIDES[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        _OVERRIDES[key] = value
    else:
      rest.append(arg)
  return flags.FLAGS(rest)


if __name__ == "__main__":
  cli.run(main, parse=_parse)
