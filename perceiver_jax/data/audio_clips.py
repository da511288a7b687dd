"""Audio clips from TFDS, cropped to the config's window: AudioSet (`audioset_clips`) or any TFDS audio set.

`dataset.name = "audioset"` reads `DATA_DIR/audioset_clips/<rate>hz/` (scripts/prepare_audioset.py):
multi-hot labels [K] (`task="multi_label"`), clips at `dataset.sample_rate` already. Any other name here is
a TFDS audio dataset (speech_commands, spoken_digit, crema_d, nsynth, ...) whose supervised keys are an
`Audio` feature and a `ClassLabel` (`task="single_label"`), resampled on the host to `dataset.sample_rate`
(scipy.signal.resample_poly, as the AudioSet preparation) and mixed to mono. Both are read through TFDS's
random-access data sources, so their files must be array_record: `prepare_audioset.py` writes them so, and
other sets are built with `tfds build NAME --file_format=array_record --data_dir=DATA_DIR`.

One example is `dataset.inputs` = (S, 1) float32 samples in [-1, 1) with `input_mask` [S] (False past a
clip's end: a clip shorter than S is padded with zeros).
- Train: the stream of epochs of `shares.shuffled_positions`; a window of S samples at a uniform random
  offset of each clip, seeded by (config.seed, stream position): so the batch of step s is a pure function of
  (seed, s) whatever the process count, and a resumed run reads what an uninterrupted one would.
- Eval: each clip once (`shares.eval_positions`, padded to whole batches with `eval_mask`). With
  `dataset.eval_windows = W` the example is W windows evenly spaced from the clip's start to its end (the
  paper's 16 overlapping windows covering the 10 s: offsets linspace(0, L - S, W)): inputs [b, W, S, 1],
  input_mask [b, W, S] (data.spec), and the eval step averages the W windows' scores into the clip's
  (train.eval_step), so eval counts clips. Without it (None), one centred window, inputs [b, S, 1].
Fields read: dataset.name, data_dir, sample_rate, inputs, num_classes, train_split, eval_split (TFDS split
strings: `balanced_train+unbalanced_train`, `train[:90%]`, ...), eval_windows.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator

import ml_collections
import numpy as np
from etils import epath

from perceiver_jax.data import shares, spec

AUDIOSET = "audioset"
_CROP = 7  # Folded into the crops' seeds.


@functools.lru_cache(maxsize=8)
def _open(name: str, data_dir: str | None, sample_rate: int):
  """(builder, audio key, label key, multi_label) of a prepared dataset."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")
  if name == AUDIOSET:
    from perceiver_jax.data import audioset

    path = audioset.dataset_dir(data_dir or "", sample_rate)
    if data_dir is None or not (path / "dataset_info.json").exists():
      raise FileNotFoundError(
        f"AudioSet at {sample_rate} Hz is not prepared in dataset.data_dir={data_dir!r} (looked for {path}). "
        f"{audioset.HOWTO} Add --sample_rate={sample_rate} (dataset.sample_rate)."
      )
    return tfds.builder_from_directory(os.fspath(path)), "audio", "labels", True
  if data_dir is not None and not epath.Path(data_dir).is_dir():
    raise FileNotFoundError(f"dataset.data_dir={data_dir!r} is not a directory (the TFDS data directory).")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"dataset.name={name!r} is neither 'audioset' nor a TFDS dataset.") from None
  audio_key, label_key = builder.info.supervised_keys or ("audio", "label")
  features = builder.info.features
  if not isinstance(features[audio_key], tfds.features.Audio) or not isinstance(
    features[label_key], tfds.features.ClassLabel
  ):
    raise ValueError(f"dataset {name!r} has no (Audio, ClassLabel) pair under {audio_key!r}, {label_key!r}.")
  return builder, audio_key, label_key, False


@functools.lru_cache(maxsize=8)
def _data_source(name: str, data_dir: str | None, sample_rate: int, split: str):
  builder, *_ = _open(name, data_dir, sample_rate)
  try:
    return builder.as_data_source(split=split)
  except Exception as error:  # TFDS raises several kinds; the two causes are told apart below.
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in dataset.data_dir={data_dir!r} and nothing is downloaded "
        f"at run time: run `tfds build {name} --file_format=array_record --data_dir=DATA_DIR` once."
      ) from None
    raise ValueError(
      f"dataset {name!r} split {split!r} cannot be read by index ({error}); its files must be array_record "
      f"(`tfds build {name} --file_format=array_record`) and the split one of {sorted(builder.info.splits)}."
    ) from None


class _Reader:
  """A config's view of a prepared dataset: split sizes, and clips as float32 mono at the config's rate."""

  def __init__(self, config: ml_collections.ConfigDict):
    d = config.dataset
    shape = tuple(d.inputs.shape)
    if len(shape) != 2 or shape[1] != 1 or not d.inputs.get("masked", False):
      raise ValueError(f"Audio clips need dataset.inputs = dict(shape=(S, 1), masked=True); got {d.inputs}.")
    self.num_samples, self.rate = shape[0], int(d.sample_rate)
    self.key = (d.name, d.data_dir, self.rate)
    builder, self.audio_key, self.label_key, self.multi_label = _open(*self.key)
    features = builder.info.features
    if self.multi_label:
      classes = features[self.label_key].shape[0]
    else:
      classes = features[self.label_key].num_classes
    if classes != d.num_classes:
      raise ValueError(
        f"dataset {d.name!r} has {classes} classes but dataset.num_classes={d.num_classes}; set "
        f"--config.dataset.num_classes={classes} (and --config.model.num_classes)."
      )
    if self.multi_label != (spec.task(config) == "multi_label"):
      want = "multi_label" if self.multi_label else "single_label"
      raise ValueError(f"dataset {d.name!r} has {want} labels; set --config.task={want}.")
    self.source_rate = int(getattr(features[self.audio_key], "sample_rate", None) or self.rate)
    self.windows = d.get("eval_windows")
    self.splits = {"train": d.train_split, "eval": d.eval_split}

  def source(self, split: str):
    return _data_source(*self.key, self.splits[split])

  def clip(self, example: dict) -> np.ndarray:
    """[L] mono at the config's rate: int16 as stored (scaled by `window`, after the crop), else float32."""
    audio = example[self.audio_key]
    audio = np.frombuffer(audio, "<i2") if isinstance(audio, bytes) else np.asarray(audio)  # audioset_clips
    if audio.dtype == np.int16 and audio.ndim == 1 and self.source_rate == self.rate:
      return audio  # AudioSet's case: only the crop is converted.
    scale = 32768.0 if audio.dtype == np.int16 else 2147483648.0 if audio.dtype == np.int32 else 1.0
    audio = audio.astype(np.float32) / scale
    if audio.ndim == 2:
      audio = audio.mean(axis=1)
    if self.source_rate != self.rate:
      from scipy import signal

      g = math.gcd(self.rate, self.source_rate)
      audio = signal.resample_poly(audio, self.rate // g, self.source_rate // g).astype(np.float32)
    return audio

  def read(self, source, indices) -> list[dict]:
    """The examples at `indices`, read in one batch (array_record reads them in parallel)."""
    indices = [int(i) for i in indices]
    try:
      return list(source.__getitems__(indices))
    except (AttributeError, TypeError):  # A source without batched reads (tfds.testing.mock_data's mock).
      return [source[i] for i in indices]

  def label(self, example: dict):
    if self.multi_label:
      return np.asarray(example[self.label_key], np.float32)
    return np.int32(example[self.label_key])


def window(clip: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """(samples float32 [length, 1], mask bool [length]) of clip[start : start + length], zero-padded.

  An int16 clip's samples are scaled to [-1, 1) here (x / 32768), only the window's.
  """
  part = clip[start : start + length]
  samples = np.zeros((length, 1), np.float32)
  samples[: len(part), 0] = part / np.float32(32768) if part.dtype == np.int16 else part
  return samples, np.arange(length) < len(part)


def eval_starts(clip_length: int, length: int, windows: int | None) -> np.ndarray:
  """The eval windows' offsets: W evenly spaced from 0 to L - S (None: one centred window)."""
  room = max(clip_length - length, 0)
  if windows is None:
    return np.array([room // 2])
  return np.round(np.linspace(0, room, windows)).astype(np.int64)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  if split not in spec.SPLITS:
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
  return len(_Reader(config).source(split))


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict]:
  reader = _Reader(config)
  source = reader.source("train")
  n, s = len(source), reader.num_samples
  step = start_step
  while True:
    index, positions = shares.shuffled_positions(config.seed, step, config.train.global_batch_size, n)
    examples = reader.read(source, index)
    inputs, masks, labels = [], [], []
    for example, position in zip(examples, positions, strict=True):
      clip = reader.clip(example)
      rng = np.random.default_rng([config.seed, _CROP, int(position)])
      samples, mask = window(clip, int(rng.integers(0, max(len(clip) - s, 0) + 1)), s)
      inputs.append(samples)
      masks.append(mask)
      labels.append(reader.label(example))
    yield {"inputs": np.stack(inputs), "input_mask": np.stack(masks), "label": np.stack(labels)}
    step += 1


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict]:
  reader = _Reader(config)
  source = reader.source("eval")
  s = reader.num_samples
  for index, eval_mask in shares.eval_positions(len(source), config.train.eval_batch_size):
    inputs, masks, labels = [], [], []
    for example in reader.read(source, index):
      clip = reader.clip(example)
      parts = [window(clip, int(start), s) for start in eval_starts(len(clip), s, reader.windows)]
      samples, mask = (np.stack(x) for x in zip(*parts, strict=True))  # [W, S, 1], [W, S]
      inputs.append(samples if reader.windows is not None else samples[0])
      masks.append(mask if reader.windows is not None else mask[0])
      labels.append(reader.label(example))
    batch = {"inputs": np.stack(inputs), "input_mask": np.stack(masks), "label": np.stack(labels)}
    batch["eval_mask"] = eval_mask
    yield batch
