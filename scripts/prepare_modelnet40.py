r"""Builds the TFDS dataset `modelnet40` once from its manual download, for configs/modelnet40.py.

  python scripts/prepare_modelnet40.py --manual_dir=/data/modelnet40 --data_dir=/data/tfds

`--manual_dir` holds PointNet's `modelnet40_ply_hdf5_2048` (the zip or its files: `ply_data_*.h5`,
`shape_names.txt`) or the meshes `ModelNet40/<class>/{train,test}/*.off` (the zip or its tree); `--source`
chooses when both are there (`auto`: the HDF5 files). The meshes are sampled to `--num_points` surface
points, area-weighted, seeded by `--seed` and the file's name. The result goes to
`--data_dir`/modelnet40/1.0.0/ (local or `gs://`), which `--config.dataset.data_dir` then names. Files that
cannot be read are counted and named, and left out.
"""

import sys

from absl import flags

from perceiver_jax import cli
from perceiver_jax.data import modelnet40

_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", None, "Directory holding the ModelNet40 download.", required=True
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to build into.", required=True)
_SOURCE = flags.DEFINE_enum("source", "auto", ["auto", "hdf5", "off"], "Which form to read.")
_NUM_POINTS = flags.DEFINE_integer("num_points", 2048, "Surface points sampled per mesh (OFF only).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the meshes' surface sampling (OFF only).")


def main(argv: list[str]) -> int:
  del argv
  builder, sizes, problems = modelnet40.prepare_modelnet40(
    _MANUAL_DIR.value, _DATA_DIR.value, _SOURCE.value, _NUM_POINTS.value, _SEED.value
  )
  if problems:
    print(f"{len(problems)} unreadable files left out:", file=sys.stderr)
    for problem in problems:
      print(f"  {problem}", file=sys.stderr)
  print(f"modelnet40 is ready in {builder.data_dir}: {sizes}; {len(problems)} unreadable files left out")
  return 0


if __name__ == "__main__":
  cli.run(main)
