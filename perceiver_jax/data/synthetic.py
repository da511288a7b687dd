"""Synthetic batches of any config, made from its batch spec (spec.py): benchmarks, compile checks, toy runs.

Example i of the endless train stream (i = step * global batch + position) and eval example i are pure
functions of (config.seed, split, i), so a batch does not depend on the process count and a resumed run
sees the data an uninterrupted one would; each process makes only its own share. Values:
- float inputs uniform in [0, 1), plus a class signal: along the last axis, the channel (class mod
  channels) is raised by 1 for each class of the example, so that a model can learn the labels;
  integer inputs uniform in [0, 100); bool inputs fair coins;
- masks: the first L positions along the first axis real, L uniform in [1, length] (every other axis whole;
  eval windows (spec.eval_windows): along the axis after the windows', the same L in each window);
- labels: a uniform class (int32, or one-hot float32 when the spec's label is soft); multi-label: each class
  on with probability 1/4, at least one per example.
Sizes: `dataset.num_train_examples` (the schedule's epoch) and `dataset.num_eval_examples` (the eval split,
padded to whole batches with `eval_mask`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from perceiver_jax.data import shares
from perceiver_jax.data import spec as spec_lib

_TRAIN, _EVAL = 0, 1


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  field = "num_train_examples" if split == "train" else "num_eval_examples"
  count = config.dataset.get(field)
  if not (isinstance(count, int) and count > 0):
    raise ValueError(f"The synthetic dataset needs dataset.{field} (a positive integer); got {count!r}.")
  return count


def _example(config, batch: dict, split_code: int, index: int) -> dict:
  """One example (no batch axis) of the spec `batch` (leaves [1, ...]), seeded by (seed, split, index)."""
  rng = np.random.default_rng([config.seed, split_code, index])
  label_spec = batch["label"]
  num_classes = config.dataset.num_classes
  if spec_lib.task(config) == "multi_label":
    classes = np.flatnonzero(rng.random(num_classes) < 0.25)
    classes = classes if classes.size else rng.integers(0, num_classes, 1)
  else:
    classes = rng.integers(0, num_classes, 1)
  if label_spec.ndim == 2:
    label = np.zeros(num_classes, np.float32)
    label[classes] = 1.0
  else:
    label = np.int32(classes[0])

  def values(s):
    shape, dtype = s.shape[1:], np.dtype(s.dtype)
    if dtype == np.bool_:
      return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
      return rng.integers(0, 100, shape).astype(dtype)
    x = rng.random(shape)
    np.add.at(x, (..., classes % shape[-1]), 1.0)
    return x.astype(dtype)

  axis = 1 if split_code == _EVAL and spec_lib.eval_windows(config) is not None else 0

  def mask(s):
    length = s.shape[1 + axis]
    real = np.arange(length) < rng.integers(1, length + 1)
    return np.broadcast_to(real.reshape(length, *([1] * (len(s.shape) - 2 - axis))), s.shape[1:]).copy()

  example = {"inputs": jax.tree.map(values, batch["inputs"]), "label": label}
  if "input_mask" in batch:
    example["input_mask"] = jax.tree.map(mask, batch["input_mask"])
  return example


def make_batch(config: ml_collections.ConfigDict, split: str, indices) -> dict:
  """The examples of `split` with these indices, stacked: a batch of the spec (without eval_mask)."""
  one = spec_lib.batch_spec(config, 1, split)
  one.pop("eval_mask", None)
  code = _TRAIN if split == "train" else _EVAL
  return shares.stacked(lambda i: _example(config, one, code, i), indices)


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict]:
  make = functools.partial(make_batch, config, "train")
  return shares.indexed_train_batches(make, config.train.global_batch_size, start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict]:
  make = functools.partial(make_batch, config, "eval")
  return shares.indexed_eval_batches(make, num_examples(config, "eval"), config.train.eval_batch_size)
