"""scikit-learn's digits: 1,797 real 8x8 grayscale images that ship inside the package (no download).

A fixed split (`dataset.split_seed`, `dataset.test_fraction`), pixels scaled from 0..16 to [0, 1].
Train batches are drawn epoch by epoch from a permutation seeded by (seed, epoch), so the batch at any
step is a pure function of (seed, step) and each process takes its own slice of it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np


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


def _local_batch_size(global_batch_size: int) -> tuple[int, int]:
  count = jax.process_count()
  if global_batch_size % count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by {count} processes.")
  local = global_batch_size // count
  return local, jax.process_index() * local


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  images, labels = _arrays(config, "train")
  n, global_batch = len(labels), config.train.global_batch_size
  local, offset = _local_batch_size(global_batch)
  step = start_step
  while True:
    # Global example positions of this step in an endless sequence of seeded epoch permutations.
    positions = np.arange(step * global_batch + offset, step * global_batch + offset + local)
    epochs, within = np.divmod(positions, n)
    index = np.empty(local, np.int64)
    for epoch in np.unique(epochs):
      order = np.random.default_rng([config.seed, int(epoch)]).permutation(n)
      index[epochs == epoch] = order[within[epochs == epoch]]
    yield {"inputs": images[index], "label": labels[index]}
    step += 1


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  images, labels = _arrays(config, "eval")
  n, global_batch = len(labels), config.train.eval_batch_size
  local, offset = _local_batch_size(global_batch)
  for start in range(0, n, global_batch):
    index = np.arange(start + offset, start + offset + local)
    mask = index < n
    index = np.minimum(index, n - 1)
    yield {"inputs": images[index], "label": labels[index], "eval_mask": mask}
