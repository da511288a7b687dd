r"""Builds TFDS imagenet2012 once from the manual download, for the ImageNet configs.

  python scripts/prepare_imagenet.py --manual_dir=/data/imagenet_tars --data_dir=/data/tfds

`--manual_dir` must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org, after
registering); the result goes to `--data_dir`/imagenet2012/, which is what `--config.dataset.data_dir` then
names. Takes hours for the real tars and about 160 GB of disk in `--data_dir`.
"""

import sys

from absl import flags

from perceiver_jax import cli
from perceiver_jax.data import tfds_input

_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", None, "Directory holding the two ILSVRC2012 tars.", required=True
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to build into.", required=True)


def main(argv: list[str]) -> int:
  del argv
  try:
    builder = tfds_input.prepare_imagenet(_MANUAL_DIR.value, _DATA_DIR.value)
  except FileNotFoundError as error:
    print(f"prepare_imagenet: {error}", file=sys.stderr)
    return 1
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"imagenet2012 is ready in {builder.data_dir}: {sizes}")
  return 0


if __name__ == "__main__":
  cli.run(main)
