"""scikit-learn's digits: 1,797 real 8x8 grayscale images that ship inside the package (no download).

A fixed split (`dataset.split_seed`, `dataset.test_fraction`), pixels scaled from 0..16 to [0, 1].
Train batches are drawn epoch by epoch from a permutation seeded by (seed, epoch), so the batch at any
step is a pure function of (seed, step) and each process takes its own slice of it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import ml_collections
import numpy as np

from perceiver_jax.data import shares


@functools.cache
def _split(split_seed: int, test_fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(split_seed).permutation(len(labels))
  num_test = int(round(len(labels) * test_fraction))
  test, train = order[:num_test], order[num_test:]
  return {"train": (images[train], labels[train]), "eval": (images[test], labels[test])}


def _arrays(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  if config.dataset.image_size != 8 or config.dataset.num_channels != 1:
    raise ValueError(
      f"digits images are 8x8x1, but dataset.image_size={config.dataset.image_size} and "
      f"dataset.num_channels={config.dataset.num_channels}; set them to 8 and 1."
    )
  return _split(config.dataset.split_seed, config.dataset.test_fraction)[split]


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  return len(_arrays(config, split)[1])


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  images, labels = _arrays(config, "train")
  step = start_step
  while True:
    index, _ = shares.shuffled_positions(config.seed, step, config.train.global_batch_size, len(labels))
    yield {"inputs": images[index], "label": labels[index]}
    step += 1


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  images, labels = _arrays(config, "eval")
  for index, mask in shares.eval_positions(len(labels), config.train.eval_batch_size):
    yield {"inputs": images[index], "label": labels[index], "eval_mask": mask}
