"""The miniature reproductions: Table 2 on digits (45 short runs) or Table 4 on shapes (21), then the tables.

  python experiments/reproduce.py --suite=digits --workdir=workdirs/reproduce
  python experiments/reproduce.py --suite=shapes --workdir=workdirs/reproduce_shapes

Rerunning skips finished runs. `--extra=num_steps=20 --seeds=0` makes a quick smoke test. Compiled steps
are cached in `<workdir>/jax_cache`, so the second and third seeds of a row skip most of the compiling.
"""

import os
import pathlib

import jax
from absl import flags
from etils import epath

from perceiver_jax import cli, config_args
from perceiver_jax.tools import reproduce, tables

_CONFIGS = {"digits": "digits.py", "shapes": "shapes.py"}
_SUITE = flags.DEFINE_enum("suite", "digits", sorted(_CONFIGS), "Which suite of runs.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs and the tables go.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every row.")
_MODELS = flags.DEFINE_list("models", None, "A subset of the suite's models (default: all).")
_EXTRA = flags.DEFINE_string("extra", "", "Config arg appended to every run's, e.g. 'num_steps=20'.")
flags.mark_flag_as_required("workdir")


def _get_config(suite):
  """The suite's `get_config(arg)`, through the one loader (`config_args.load`)."""
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / _CONFIGS[suite]
  return lambda arg=None: config_args.load(f"{path}:{arg or ''}")


def main(argv):
  del argv
  jax.config.update("jax_compilation_cache_dir", os.fspath(epath.Path(_WORKDIR.value) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  print(
    reproduce.run_suite(
      _SUITE.value,
      _WORKDIR.value,
      _get_config(_SUITE.value),
      seeds=[int(s) for s in _SEEDS.value],
      models=_MODELS.value,
      extra=_EXTRA.value,
      gflops_fn=tables.config_gflops,
    )
  )


if __name__ == "__main__":
  cli.run(main)
