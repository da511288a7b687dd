"""Launches a sweep: one run per point of the cross product of `--sweep` axes.

  python scripts/sweep.py --config=configs/imagenet.py --sweep='num_cross_attends=1,2,4,8' \
      --sweep='seed=0,1' --workdir_root=/mnt/runs/cross_attends --launcher=tpu_pod

Each run trains in `<workdir_root>/<its overrides>` (e.g. `num_cross_attends=4,seed=1`). Launchers: `local`
(one after another, here), `print` (the commands), `tpu_pod` and `slurm` (the commands that launch each run
with scripts/launch_tpu_pod.sh or scripts/slurm_multinode_gpu.sbatch). `--config.a.b=v` overrides and any
arguments after `--` (e.g. `-- --notensorboard`) are passed on to every run.
"""

import os
import sys

from absl import flags

from perceiver_jax import cli
from perceiver_jax.tools import sweep

_CONFIG = flags.DEFINE_string("config", None, "Config file[:variants] of every run.", required=True)
_SWEEP = flags.DEFINE_multi_string("sweep", [], "An axis, key=value1,value2,...; repeat for more axes.")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", None, "Directory of the runs' workdirs.", required=True)
_LAUNCHER = flags.DEFINE_enum("launcher", "print", sweep.LAUNCHERS, "How to launch the runs.")

_TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "train.py")


def _parse_flags(argv: list[str]) -> list[str]:
  # absl does not know the config's fields: set `--config.*` overrides aside for the runs.
  argv, overrides = cli.split_overrides(argv)
  return flags.FLAGS(argv) + [f"--config.{key}={value}" for key, value in overrides.items()]


def main(argv: list[str]) -> None:
  extra = [a for a in argv[1:] if a != "--"]
  train_script = os.path.relpath(os.path.normpath(_TRAIN_SCRIPT))
  try:
    status = sweep.main(
      _CONFIG.value, _SWEEP.value, _WORKDIR_ROOT.value, _LAUNCHER.value, train_script, extra
    )
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  sys.exit(status)


if __name__ == "__main__":
  cli.run(main, parse=_parse_flags)
