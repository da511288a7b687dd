"""Trains and evaluates a config: `python experiments/train.py [--config=...] [--workdir=...]`.

With no flags it trains the embedded default (configs/digits.py) into ./workdirs/digits.
`--config=configs/imagenet.py:permuted,runlocal` picks a config file and its variants, and
`--config.train.num_steps=100` overrides any field. A workdir that holds checkpoints is resumed from the
latest; a resume that changes the experiment is refused (`--accept_config_change` accepts it, recorded
in config.json). Bad input ends in one `error: ...` line (`--verbose` shows the traceback). Multi-process
runs start every process with the same flags: SLURM (`srun`) and Cloud TPU pods are detected; elsewhere
add `--coordinator_address=host:port --num_processes=N --process_id=i`.
"""

import os
import pathlib
import signal

from absl import flags, logging
from etils import epath

from perceiver_jax import cli

cli.sigterm_in_one_line()  # Before JAX (and libtpu) load: a SIGTERM while importing ends in one line.

from perceiver_jax.training import distributed, tasks, train  # noqa: E402

_DEFAULT_CONFIG = os.fspath(pathlib.Path(__file__).parent / ".." / "configs" / "digits.py")
_CONFIG = cli.define_config_file("config", _DEFAULT_CONFIG, "Config file[:variants].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<dataset name>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
_LOCAL_DEVICES = flags.DEFINE_integer("local_device_count", None, "CPU devices per process (CPU runs).")
_ACCEPT_CHANGE = flags.DEFINE_bool(
  "accept_config_change",
  False,
  "Resume a run with a config that changes its experiment (model, input, optimizer, ...); the change is "
  "recorded in its config.json. Without it such a resume is refused before the workdir is touched.",
)
_INIT_TIMEOUT = flags.DEFINE_integer(
  "initialization_timeout",
  distributed.DEFAULT_INITIALIZATION_TIMEOUT,
  "Seconds the processes of a multi-process run wait for each other at start-up.",
)
_TENSORBOARD = flags.DEFINE_bool(
  "tensorboard", True, "Write TensorBoard events; --notensorboard skips importing TensorFlow (~10 s)."
)


def main(argv):
  del argv
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _LOCAL_DEVICES.value, _INIT_TIMEOUT.value
  )
  if distributed.single_process_backend():  # libtpu took SIGTERM over as it loaded: take it back.
    cli.sigterm_in_one_line()
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.fspath(epath.Path("workdirs") / config.dataset.name)
  distributed.check_same_config(
    config, flags={"--workdir": workdir, "--accept_config_change": _ACCEPT_CHANGE.value}
  )
  with distributed.naming_lost_processes():  # A process gone mid-run: one line naming it, on the others.
    results = train.train_and_evaluate(
      config,
      workdir,
      tensorboard=_TENSORBOARD.value,
      accept_config_change=_ACCEPT_CHANGE.value,
      hold_sigterm=True,
    )
  if results.get("preempted"):
    for s in (signal.SIGTERM, signal.SIGINT):  # Saved and stopped: later signals cannot end the exit early.
      signal.signal(s, signal.SIG_IGN)
    print(f"Preempted: checkpoint of step {results['step']} saved in {workdir}; run again to resume.")
    return
  logging.info("Results in %s: %s", workdir, results["eval"])
  print(
    f"eval {tasks.describe(results['eval'])} "
    f"after {results['step']} steps ({results['train_seconds']:.0f} s); results in {workdir}/results.json"
  )


if __name__ == "__main__":
  cli.run(main)
