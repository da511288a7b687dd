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
Video (configs/audioset.py's `video` and `audio_video*` variants): `dataset.inputs` a mapping
{video: (T, H, H, 3)} or {audio: (S, 1), video: (T, H, H, 3)}, both masked, reads the clips' frames too
(`audioset_clips/<rate>hz/2.0.0`, `prepare_audioset.py --video`: 25 fps JPEGs). An example is then
{'video': float32 [T, H, H, 3] in [0, 1], 'audio': [S, 1]} with `input_mask` {'video': [T, H, H],
'audio': [S]} (False for frames or samples past the clip's end):
- Train: a random window of T frames (data/video_ops.train_window; the paper's 32 frames, 1.28 s) and the
  S samples from the same instant (video_ops.window_samples), only the window's JPEGs decoded; one
  Inception-style crop for all its frames resized to H, a flip with probability 1/2 and one colour jitter
  (video_ops), all seeded by (config.seed, stream position) as the audio crop.
- Eval: W = eval_windows windows of T frames evenly spaced over the clip (video_ops.eval_windows: the
  paper's 16 overlapping windows) with their audio, the central square of each frame resized to H;
  inputs {video [b, W, T, H, H, 3], audio [b, W, S, 1]}; the eval step averages the windows' scores as for
  audio (it maps over the inputs' mapping). None: one centred window.
Fields read: dataset.name, data_dir, sample_rate, inputs, num_classes, train_split, eval_split (TFDS split
strings: `balanced_train+unbalanced_train`, `train[:90%]`, ...), eval_windows.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from etils import epath

from perceiver_jax.data import shares, spec, video_ops

AUDIOSET = "audioset"
_CROP = 7  # Folded into the crops' seeds.


@functools.lru_cache(maxsize=8)
def _open(name: str, data_dir: str | None, sample_rate: int, video: bool = False):
  """(builder, audio key, label key, multi_label) of a prepared dataset (`video`: AudioSet's 2.0.0)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")
  if name == AUDIOSET:
    from perceiver_jax.data import audioset

    path = audioset.dataset_dir(data_dir or "", sample_rate, video)
    if data_dir is None or not (path / "dataset_info.json").exists():
      what = "with its video " if video else ""
      raise FileNotFoundError(
        f"AudioSet {what}at {sample_rate} Hz is not prepared in dataset.data_dir={data_dir!r} (looked for "
        f"{path}). {audioset.HOWTO} Add --sample_rate={sample_rate} (dataset.sample_rate)"
        + (" and --video." if video else ".")
      )
    return tfds.builder_from_directory(os.fspath(path)), "audio", "labels", True
  if video:
    raise ValueError(
      f"dataset.name={name!r}: video inputs are read from AudioSet only (dataset.name='audioset')."
    )
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
def _data_source(name: str, data_dir: str | None, sample_rate: int, video: bool, split: str):
  builder, *_ = _open(name, data_dir, sample_rate, video)
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
    self.video = None  # (T, H) of the video variants' frames.
    audio = d.inputs
    if "video" in d.inputs:
      video = d.inputs.video
      t, h, w, c = (tuple(video.shape) + (0, 0, 0, 0))[:4]
      if (
        set(d.inputs) - {"audio", "video"}
        or len(video.shape) != 4
        or c != 3
        or h != w
        or not video.get("masked")
      ):
        raise ValueError(
          "AudioSet's video needs dataset.inputs = dict(video=dict(shape=(T, H, H, 3), masked=True)) and "
          f"optionally audio=dict(shape=(S, 1), masked=True); got {d.inputs}."
        )
      self.video = (t, h)
      audio = d.inputs.get("audio")
    shape = tuple(audio.shape) if audio is not None else (0, 1)
    if len(shape) != 2 or shape[1] != 1 or not (audio is None or audio.get("masked", False)):
      raise ValueError(f"Audio clips need dataset.inputs = dict(shape=(S, 1), masked=True); got {d.inputs}.")
    self.num_samples, self.rate = shape[0], int(d.sample_rate)  # S = 0: the video alone.
    self.key = (d.name, d.data_dir, self.rate, self.video is not None)
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


def _decode_frames(jpegs, first: int, count: int) -> np.ndarray:
  """uint8 [n, H, W, 3]: the JPEG frames first .. first + count - 1 of a clip (those there; PIL)."""
  from PIL import Image

  frames = []
  for data in jpegs[first : first + count]:
    with Image.open(io.BytesIO(data)) as image:
      if image.format != "JPEG":  # Our own files; still, nothing but a JPEG is decoded.
        raise ValueError(f"a video frame is {image.format}, not JPEG: prepare the data again.")
      frames.append(np.asarray(image.convert("RGB")))
  return np.stack(frames)


def train_video(jpegs, reader: _Reader, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
  """(float32 [T, H, H, 3] augmented, bool [T] mask, first frame) of a random window of a clip's frames."""
  t, size = reader.video
  first = video_ops.train_window(len(jpegs), rng, t)
  frames, mask = video_ops.take_window(_decode_frames(jpegs, first, t), 0, t)
  frames = video_ops.colour(video_ops.flip(video_ops.inception_crop(frames, rng, size), rng), rng)
  frames[~mask] = 0.0  # Padding frames stay zero after the colour jitter.
  return frames, mask, first


def eval_video(jpegs, reader: _Reader, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [W, T, H, H, 3], bool [W, T]): the windows from `starts`, centre-cropped; each frame once."""
  t, size = reader.video
  base = int(starts.min())
  frames = _decode_frames(jpegs, base, int(starts.max()) + t - base)
  frames = video_ops.centre_crop(frames, size).astype(np.float32) / np.float32(255)
  parts = [video_ops.take_window(frames, int(s) - base, t) for s in starts]
  return tuple(np.stack(x) for x in zip(*parts, strict=True))


def _pixels(frame_mask: np.ndarray, frames: np.ndarray) -> np.ndarray:
  """bool [..., T] per-frame mask -> [..., T, H, W], the batch spec's video mask (one flag a pixel)."""
  return np.broadcast_to(frame_mask[..., None, None], frames.shape[:-1]).copy()


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
      if reader.video is None:
        samples, mask = window(clip, int(rng.integers(0, max(len(clip) - s, 0) + 1)), s)
      else:  # The frames' window, then the audio from the same instant.
        frames, frame_mask, first = train_video(example["video"], reader, rng)
        samples, mask = {"video": frames}, {"video": _pixels(frame_mask, frames)}
        if s:
          samples["audio"], mask["audio"] = window(clip, video_ops.window_samples(first, reader.rate), s)
      inputs.append(samples)
      masks.append(mask)
      labels.append(reader.label(example))
    yield _stacked(inputs, masks, labels)
    step += 1


def _stacked(inputs: list, masks: list, labels: list) -> dict:
  """The batch of examples' inputs and masks (arrays, or mappings of arrays) and labels."""
  stack = lambda *x: np.stack(x)  # noqa: E731
  return {
    "inputs": jax.tree.map(stack, *inputs),
    "input_mask": jax.tree.map(stack, *masks),
    "label": np.stack(labels),
  }


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict]:
  reader = _Reader(config)
  source = reader.source("eval")
  s = reader.num_samples
  for index, eval_mask in shares.eval_positions(len(source), config.train.eval_batch_size):
    inputs, masks, labels = [], [], []
    for example in reader.read(source, index):
      clip = reader.clip(example)
      if reader.video is None:
        starts = eval_starts(len(clip), s, reader.windows)
      else:  # The frames' windows, and the audio's from the same instants.
        t = reader.video[0]
        num_frames = len(example["video"])
        starts = video_ops.eval_windows(num_frames, reader.windows, t) if reader.windows else None
        if starts is None:
          starts = np.array([max(num_frames - t, 0) // 2])
        frames, frame_mask = eval_video(example["video"], reader, starts)
        starts = [video_ops.window_samples(int(f), reader.rate) for f in starts]
      parts = [window(clip, int(start), s) for start in starts]
      samples, mask = (np.stack(x) for x in zip(*parts, strict=True))  # [W, S, 1], [W, S]
      if reader.video is not None:
        samples, mask = (
          {"video": frames, "audio": samples},
          {"video": _pixels(frame_mask, frames), "audio": mask},
        )
        if not s:
          del samples["audio"], mask["audio"]
      one = reader.windows is None
      inputs.append(jax.tree.map(lambda x: x[0], samples) if one else samples)
      masks.append(jax.tree.map(lambda x: x[0], mask) if one else mask)
      labels.append(reader.label(example))
    batch = _stacked(inputs, masks, labels)
    batch["eval_mask"] = eval_mask
    yield batch
