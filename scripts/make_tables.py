"""Writes the paper's tables from finished runs, as Markdown, CSV and a plot of the accuracy curves.

  python scripts/make_tables.py --runs=workdirs/digits --runs=workdirs/imagenet --out=workdirs/tables

Every directory under a `--runs` root that holds results.json and config.json is a run; see
`perceiver_jax.tools.tables` for which row each run fills. `--nogflops` skips counting FLOPs.
"""

from absl import flags

from perceiver_jax import cli
from perceiver_jax.tools import tables

_RUNS = flags.DEFINE_multi_string("runs", None, "Directory holding runs (searched recursively); repeatable.")
_OUT = flags.DEFINE_string("out", None, "Where tables.md, the CSVs and the curves go.")
_GFLOPS = flags.DEFINE_bool("gflops", True, "Count each row's forward GFLOPs per example.")
flags.mark_flags_as_required(["runs", "out"])


def main(argv):
  del argv
  runs = tables.find_runs(_RUNS.value)
  print(tables.write_report(runs, _OUT.value, tables.config_gflops if _GFLOPS.value else None))


if __name__ == "__main__":
  cli.run(main)
