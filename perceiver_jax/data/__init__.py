"""Input pipelines: host-side numpy batches for this process's share of every global batch.

The batch contract, the same for every modality (b = global batch size / process count):
- `'inputs'`: [b, *input_shape], what the configured front end takes (`config.input.front_end`; images:
  float32 [b, H, W, C]); `training.build.input_spec(config)` gives one example's shape and dtype.
- `'input_mask'` (optional): bool [b, *input_shape[:-1]], one flag per input position, False for padding
  (e.g. the tail of a variable-length sequence); the front end and the model leave padding out.
- `'label'`: int32 [b] (float32 [b, num_classes] soft labels under MixUp/CutMix).
- eval batches only, `'eval_mask'`: bool [b], False for padding *examples*, which fill the last batch; they
  are left out of every metric, so every example is counted exactly once across all processes, and every
  process yields the same number of batches.

Every source gives three functions, chosen by `config.dataset.name` in `SOURCES`:
- `train_batches(config, start_step=0)` yields train batches forever. The batch for step s depends only
  on (config.seed, s), so a resumed run sees exactly the data an uninterrupted run would.
- `eval_batches(config)` yields the eval split once, with `eval_mask`.
- `num_examples(config, split)`: examples in `split` ('train' or 'eval').
A new dataset is a module with these three functions and a line in `SOURCES`. Any name not there is a
TFDS dataset (tfds_input). This package never imports the model: position features and permutations are
the front end's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]


def _digits() -> ModuleType:
  from perceiver_jax.data import digits

  return digits


def _shapes() -> ModuleType:
  from perceiver_jax.data import shapes

  return shapes


def _modelnet40() -> ModuleType:
  from perceiver_jax.data import modelnet40  # Imports TensorFlow: only when ModelNet40 is asked for.

  return modelnet40


def _tfds() -> ModuleType:
  from perceiver_jax.data import tfds_input  # Imports TensorFlow: only when a TFDS dataset is asked for.

  return tfds_input


# `config.dataset.name` -> a function returning the source (a module or any object with the three
# functions above), so that a source's imports are paid only when it is used.
SOURCES: dict[str, Callable[[], object]] = {
  "digits": _digits,
  "shapes": _shapes,
  "modelnet40": _modelnet40,
}


def source(config: ml_collections.ConfigDict):
  """The data source of `config.dataset.name`: SOURCES' entry, else a TFDS dataset of that name."""
  return SOURCES.get(config.dataset.name, _tfds)()


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[Batch]:
  return source(config).train_batches(config, start_step=start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[Batch]:
  return source(config).eval_batches(config)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split` ('train' or 'eval') of the configured dataset."""
  return source(config).num_examples(config, split)
