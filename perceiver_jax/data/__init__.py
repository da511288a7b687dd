"""Input pipelines: host-side numpy batches for this process's share of every global batch.

Every source gives the same two iterators, chosen by `config.dataset.name`:
- `train_batches(config, start_step=0)` yields, forever, `{'image': float32 [b, H, W, C], 'label': int32
  [b]}` with b = global_batch_size / process_count. The batch for step s depends only on
  (config.seed, s), so a resumed run sees exactly the data an uninterrupted run would.
- `eval_batches(config)` yields, once over the eval split, the same plus `'mask': bool [b]`; padding
  examples are masked out so that every example is counted exactly once across all processes, and every
  process yields the same number of batches.
This package never imports the model: position features and permutations are the front end's.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]


def _source(config: ml_collections.ConfigDict):
  if config.dataset.name == "digits":
    from perceiver_jax.data import digits

    return digits
  from perceiver_jax.data import tfds_input

  return tfds_input


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[Batch]:
  return _source(config).train_batches(config, start_step=start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[Batch]:
  return _source(config).eval_batches(config)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split` ('train' or 'eval') of the configured dataset."""
  return _source(config).num_examples(config, split)
