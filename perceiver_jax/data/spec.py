"""The batch spec: what a train or eval batch of a config is, shape and dtype, at any batch size.

One example's inputs come from the `dataset` section, so that sources, the synthetic source and every tool
agree without running a pipeline:
- `dataset.inputs = None`: an image, float32 [image_size, image_size, num_channels], no mask (or, where
  the dataset declares `num_points`, a point cloud float32 [num_points, 3 + point_channels]);
- `dataset.inputs = dict(shape=(M, C), dtype="float32", masked=True)`: one array of that shape;
  `masked`: batches carry `input_mask` bool [b, *shape[:-1]] (False for padding positions);
- `dataset.inputs = dict(audio=dict(shape=...), video=dict(shape=..., masked=True))`: a mapping from
  modality name to array, each with its own optional mask (`input_mask` is then a mapping holding the
  masked modalities only).
The front ends consume these shapes (`config.input`); a source checks that what it reads is what the
section says.

The label's form follows `config.task` and the augmentation:
- `single_label`: int32 [b] class indices; float32 [b, K] soft labels (rows sum to 1) when the config mixes
  images in training (MixUp or CutMix: `mixes`); eval labels are always int32 [b];
- `multi_label`: float32 [b, K] multi-hot (0/1; mixed rows under MixUp/CutMix), in train and eval.
Eval batches add `eval_mask` bool [b] (False for the padding examples that fill the last batch).
Eval windows: with `dataset.eval_windows = W` (an int; e.g. the paper's 16 windows of each AudioSet clip) an
eval example is W crops of the same clip: eval `inputs` [b, W, *shape] and `input_mask` [b, W, *shape[:-1]];
the eval step scores the W windows and averages their scores into the example's (train.eval_step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

TASKS = ("single_label", "multi_label")
SPLITS = ("train", "eval")
_ARRAY_KEYS = frozenset({"shape", "dtype", "masked"})

# An example's inputs: one array, or a mapping from modality name to array.
Inputs = jax.ShapeDtypeStruct | dict[str, jax.ShapeDtypeStruct]


def task(config: ml_collections.ConfigDict) -> str:
  """`config.task`, checked: 'single_label' or 'multi_label'."""
  name = config.task
  if name not in TASKS:
    raise ValueError(f"task={name!r} must be one of {TASKS}.")
  return name


def mixes(config: ml_collections.ConfigDict) -> bool:
  """Whether training batches mix examples (MixUp or CutMix), which makes their labels soft [b, K]."""
  return "augment" in config and (config.augment.mixup_alpha > 0 or config.augment.cutmix_alpha > 0)


def _array(what: str, entry: Mapping[str, Any]) -> tuple[jax.ShapeDtypeStruct, bool]:
  unknown = set(entry) - _ARRAY_KEYS
  if unknown or "shape" not in entry:
    raise ValueError(
      f"{what} must be dict(shape=(...), dtype='float32', masked=False); got fields {sorted(entry)}."
    )
  shape = tuple(entry["shape"])
  if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
    raise ValueError(f"{what}.shape={shape} must be positive integers.")
  try:
    dtype = np.dtype(entry.get("dtype") or "float32")
  except TypeError:
    raise ValueError(f"{what}.dtype={entry.get('dtype')!r} is not a dtype.") from None
  return jax.ShapeDtypeStruct(shape, dtype), bool(entry.get("masked", False))


def _described(dataset: Mapping[str, Any]) -> tuple[Inputs, Any]:
  """(inputs, masked) of one example: masked is a bool, or for a mapping the set of masked modalities."""
  entry = dataset.get("inputs")
  entry = entry.to_dict() if hasattr(entry, "to_dict") else entry  # A ConfigDict is no Mapping.
  if entry is None and dataset.get("num_points") is not None:  # A point cloud: xyz, more channels per point.
    points, extra = dataset["num_points"], dataset.get("point_channels", 0)
    if not (isinstance(points, int) and points > 0 and isinstance(extra, int) and extra >= 0):
      raise ValueError(
        f"dataset.num_points={points!r} must be a positive integer and dataset.point_channels={extra!r} "
        "a non-negative one."
      )
    return jax.ShapeDtypeStruct((points, 3 + extra), np.float32), False
  if entry is None:
    size, channels = dataset.get("image_size"), dataset.get("num_channels")
    if not (isinstance(size, int) and size > 0 and isinstance(channels, int) and channels > 0):
      raise ValueError(
        f"dataset.image_size={size!r} and dataset.num_channels={channels!r} must be positive integers "
        "(or describe the inputs in dataset.inputs)."
      )
    return jax.ShapeDtypeStruct((size, size, channels), np.float32), False
  if not isinstance(entry, Mapping) or not entry:
    raise ValueError(f"dataset.inputs={entry!r} must be None (an image), an array's dict or a mapping.")
  if "shape" in entry:
    return _array("dataset.inputs", entry)
  inputs, masked = {}, set()
  for name in sorted(entry):
    if not isinstance(entry[name], Mapping):
      raise ValueError(f"dataset.inputs.{name} must be dict(shape=(...), dtype=..., masked=...).")
    inputs[name], is_masked = _array(f"dataset.inputs.{name}", entry[name])
    if is_masked:
      masked.add(name)
  return inputs, frozenset(masked)


def _dataset(config_or_dataset) -> Mapping[str, Any]:
  if "dataset" in config_or_dataset:
    return config_or_dataset["dataset"]
  return config_or_dataset


def example_inputs(config: ml_collections.ConfigDict) -> Inputs:
  """One example's `inputs`: a ShapeDtypeStruct, or a mapping modality -> ShapeDtypeStruct."""
  return _described(_dataset(config))[0]


def eval_windows(config: ml_collections.ConfigDict) -> int | None:
  """`dataset.eval_windows`, checked: None (eval examples are one crop) or W >= 1 windows per example."""
  windows = _dataset(config).get("eval_windows")
  if windows is not None and not (isinstance(windows, int) and windows >= 1):
    raise ValueError(f"dataset.eval_windows={windows!r} must be None or a positive integer.")
  return windows


def batch_spec(config: ml_collections.ConfigDict, batch_size: int, split: str = "train") -> dict[str, Any]:
  """The shapes and dtypes of a batch of `batch_size` examples of `split` ('train' or 'eval').

  Returns {'inputs', 'input_mask' (only if masked), 'label', 'eval_mask' (eval only)} of
  jax.ShapeDtypeStruct leaves ('inputs' and 'input_mask' are mappings for a mapping of modalities).
  `batch_size` is whatever batch is meant: a global batch (ahead-of-time tools) or a process's share.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} must be one of {SPLITS}.")
  inputs, masked = _described(_dataset(config))
  b = int(batch_size)
  windows = eval_windows(config)
  lead = (b, windows) if split == "eval" and windows is not None else (b,)

  def batched(s: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*lead, *s.shape), s.dtype)

  def mask(s: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*lead, *s.shape[:-1]), np.bool_)

  spec: dict[str, Any] = {}
  if isinstance(inputs, dict):
    spec["inputs"] = {name: batched(s) for name, s in inputs.items()}
    if masked:
      spec["input_mask"] = {name: mask(inputs[name]) for name in sorted(masked)}
  else:
    spec["inputs"] = batched(inputs)
    if masked:
      spec["input_mask"] = mask(inputs)
  num_classes = config.dataset.num_classes
  if task(config) == "multi_label" or (split == "train" and mixes(config)):
    spec["label"] = jax.ShapeDtypeStruct((b, num_classes), np.float32)
  else:
    spec["label"] = jax.ShapeDtypeStruct((b,), np.int32)
  if split == "eval":
    spec["eval_mask"] = jax.ShapeDtypeStruct((b,), np.bool_)
  return spec


def check_batch(batch: Mapping[str, Any], spec: Mapping[str, Any], what: str = "batch") -> None:
  """Raises ValueError naming every key, shape or dtype where `batch` is not `spec`."""
  problems = []
  if set(batch) != set(spec):
    problems.append(f"keys {sorted(batch)}, the spec's {sorted(spec)}")
  for key in sorted(set(batch) & set(spec)):
    got, want = batch[key], spec[key]
    if isinstance(want, Mapping) != isinstance(got, Mapping):
      kind = "a mapping" if isinstance(got, Mapping) else "an array"
      problems.append(f"{key} is {kind}; the spec's is not")
      continue
    pairs = [(f"{key}.{m}", got.get(m), want[m]) for m in want] if isinstance(want, Mapping) else []
    if isinstance(want, Mapping) and set(got) != set(want):
      problems.append(f"{key} has {sorted(got)}, the spec's {sorted(want)}")
    for name, g, w in pairs or [(key, got, want)]:
      if g is None:
        continue
      shape, dtype = tuple(np.shape(g)), np.asarray(g).dtype if not hasattr(g, "dtype") else np.dtype(g.dtype)
      if shape != tuple(w.shape) or dtype != np.dtype(w.dtype):
        problems.append(f"{name} is {dtype}{list(shape)}, the spec's {np.dtype(w.dtype)}{list(w.shape)}")
  if problems:
    raise ValueError(f"The {what} is not of the batch spec: {'; '.join(problems)}.")
