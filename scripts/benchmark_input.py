r"""Measures the input pipeline alone (no model): images/s per process for train and eval preprocessing.

  python scripts/benchmark_input.py --config=configs/imagenet.py --config.dataset.data_dir=/data/tfds \
      --config.train.global_batch_size=64 --config.train.eval_batch_size=64 --num_batches=50

`--fake_images_per_class=N` builds a fake ImageNet first (3 classes x N train and 3N validation JPEGs at
typical ImageNet sizes, written as the ILSVRC2012 tars and run through the real TFDS builder, as the tests
do) in a temporary directory and measures on that. Prints one JSON line.
"""

import itertools
import json
import os
import tempfile
import time

import tensorflow as tf  # noqa: F401  Imported before any timing: the import alone takes seconds.
from absl import flags

from perceiver_jax import cli, data
from perceiver_jax.data import tfds_input

_CONFIG = cli.define_config_file("config", None, "Config file, e.g. configs/imagenet.py:runlocal.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 20, "Batches timed, per pipeline.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Batches pulled before timing (pipeline start, buffers).")
_FAKE = flags.DEFINE_integer("fake_images_per_class", 0, "If > 0, measure on a fake ImageNet of this size.")

# Typical ImageNet photo sizes (height, width); the median image is about 400 x 350.
_IMAGENET_LIKE_SIZES = ((375, 500), (500, 375), (333, 500), (500, 400), (400, 300), (281, 500))


def _measure(batches, num_batches: int, warmup: int) -> tuple[float, float]:
  """(seconds to the first batch, images/s over `num_batches` after `warmup`); padding is not counted."""
  start = time.perf_counter()
  next(batches)
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    next(batches)
  images, start = 0, time.perf_counter()
  for _ in range(num_batches):
    batch = next(batches)
    images += int(batch["eval_mask"].sum()) if "eval_mask" in batch else len(batch["label"])
  return first, images / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  with tempfile.TemporaryDirectory() as tmp:
    if _FAKE.value > 0:
      manual = os.path.join(tmp, "manual")
      tfds_input.write_fake_imagenet(
        manual, train_per_class=_FAKE.value, num_val=3 * _FAKE.value, sizes=_IMAGENET_LIKE_SIZES
      )
      tfds_input.prepare_imagenet(manual, os.path.join(tmp, "data"))
      config.dataset.name, config.dataset.data_dir = tfds_input.IMAGENET_NAME, os.path.join(tmp, "data")
    train_first, train_rate = _measure(data.train_batches(config), _NUM_BATCHES.value, _WARMUP.value)
    # Eval passes are chained so that a small split still gives `num_batches` batches.
    evals = itertools.chain.from_iterable(data.eval_batches(config) for _ in itertools.count())
    eval_first, eval_rate = _measure(evals, _NUM_BATCHES.value, _WARMUP.value)
  import jax

  print(
    json.dumps(
      {
        "dataset": config.dataset.name,
        "fake_data": _FAKE.value > 0,
        "image_size": config.dataset.image_size,
        "randaugment": [config.augment.randaugment_layers, config.augment.randaugment_magnitude],
        "process_count": jax.process_count(),
        "train_batch_per_process": config.train.global_batch_size // jax.process_count(),
        "eval_batch_per_process": config.train.eval_batch_size // jax.process_count(),
        "cpu_count": os.cpu_count(),
        "train_images_per_s": round(train_rate, 1),
        "eval_images_per_s": round(eval_rate, 1),
        "train_first_batch_s": round(train_first, 2),
        "eval_first_batch_s": round(eval_first, 2),
      }
    )
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
