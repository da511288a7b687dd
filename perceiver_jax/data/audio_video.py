"""The embedded audio+video miniature: seeded synthetic clips seen and heard, no download
(`dataset.name="audio_video"`).

One example is {'audio': mono samples [S, 1], 'video': frames [T, H, W, 3]} over the same time (S / T
samples per frame; the default 4,096 samples at 4 kHz and 16 frames of 16 x 16, 16 fps, 1.02 s), each with
its mask (False past the clip's real length, uniform in [`min_fraction`, 1] of the crop), and a multi-hot
label over the 10 `CLASSES`. A clip holds one to three events of distinct classes, each over a random span:
- heard only: `low_tone`, `chirp_up`, `low_noise`, `slow_clicks` (data/sounds.py's events);
- seen only: `square_right` (a square crossing from left to right), `disc_down` (a disc falling),
  `cross_diagonal` (a plus sign moving down the diagonal);
- seen and heard, each stream independently present with probability `av_presence` (at least one):
  `bouncing_ball` (a ball bouncing; a low thump at each bounce), `siren` (a light flashing in the top rows;
  a tone warbling between 1,000 and 1,400 Hz at the flashing rate), `engine` (a square shaking; band noise
  at 1,200-1,800 Hz throbbing at the shaking rate).
So some labels are only in the sound, some only in the picture, and some in either: a model that fuses both
streams can tag all ten, and one that has learnt to lean on the video misses the shared classes when the
video does not show them (what the paper's video dropout is for). Frames are dark noise (0.1 std) with the
objects in random bright colours; audio is background noise (0.05 std) plus the events.
`dataset.blank_streams` (eval only; evaluate.py may change it): streams zeroed in every eval batch, masks
unchanged, e.g. ('video',) to score a model on the sound alone.
Example i of a split is a pure function of (config.seed, split, i), as data/sounds.py: the batch of step s
does not depend on the process count, and a resumed run sees the data an uninterrupted one would.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import ml_collections
import numpy as np

from perceiver_jax.data import shares, sounds

AUDIO_ONLY = ("low_tone", "chirp_up", "low_noise", "slow_clicks")
VIDEO_ONLY = ("square_right", "disc_down", "cross_diagonal")
AUDIO_VISUAL = ("bouncing_ball", "siren", "engine")
CLASSES = AUDIO_ONLY + VIDEO_ONLY + AUDIO_VISUAL
_TRAIN, _EVAL = 0, 1


def _shapes(config: ml_collections.ConfigDict) -> tuple[int, tuple[int, int, int]]:
  """(S, (T, H, W)): the crop's samples and frames, checked against dataset.inputs and num_classes."""
  d = config.dataset
  inputs = d.inputs.to_dict() if hasattr(d.inputs, "to_dict") else dict(d.inputs)
  audio, video = inputs.get("audio", {}), inputs.get("video", {})
  a, v = tuple(audio.get("shape", ())), tuple(video.get("shape", ()))
  if (
    set(inputs) != {"audio", "video"}
    or len(a) != 2
    or a[1] != 1
    or len(v) != 4
    or v[3] != 3
    or not (audio.get("masked") and video.get("masked"))
    or a[0] % v[0]
  ):
    raise ValueError(
      "The audio_video dataset needs dataset.inputs = dict(audio=dict(shape=(S, 1), masked=True), "
      f"video=dict(shape=(T, H, W, 3), masked=True)) with T dividing S; got {inputs}."
    )
  if d.num_classes != len(CLASSES):
    raise ValueError(
      f"dataset.num_classes={d.num_classes} must be {len(CLASSES)} for the audio_video dataset."
    )
  if not 0.0 < d.min_fraction <= 1.0 or not 0.0 < d.av_presence <= 1.0:
    raise ValueError(
      f"dataset.min_fraction={d.min_fraction} and dataset.av_presence={d.av_presence} must be in (0, 1]."
    )
  return a[0], v[:3]


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  return sounds.num_examples(config, split)


def _sound(rng, name: str, n: int, rate: float, period: float) -> np.ndarray:
  """The sound of one event of `n` samples, peak about 1; `period` (s) paces the audio-visual ones."""
  if name in AUDIO_ONLY:
    return sounds._event(rng, sounds.KINDS.index(name), n, rate)
  t = np.arange(n) / rate
  if name == "bouncing_ball":  # A 30 ms decaying 150 Hz thump at each bounce.
    out = np.zeros(n)
    width = int(0.03 * rate)
    thump = np.sin(2 * np.pi * 150 * np.arange(width) / rate) * np.exp(-np.arange(width) / (0.3 * width))
    for start in (np.arange(0, n / rate, period) * rate).astype(int):
      out[start : start + width] = thump[: n - start]
    return out
  if name == "siren":
    phase = 2 * np.pi * np.cumsum(1200 + 200 * np.sin(2 * np.pi * t / period)) / rate
    return np.sin(phase)
  return sounds._band_noise(rng, n, rate, 1200, 1800) * (0.6 + 0.4 * np.cos(2 * np.pi * t / period))


def _draw(rng, name: str, frames: np.ndarray, fps: float, period: float) -> None:
  """Draws one event on `frames` [F, H, W, 3] (the event's frames), in place."""
  count, h, w, _ = frames.shape
  colour = rng.uniform(0.5, 1.0, size=3)
  yy, xx = np.mgrid[0:h, 0:w]
  y0, cx = int(rng.integers(0, h - 4)), rng.uniform(3, w - 3)  # The square's row, the disc's column.
  for i, f in enumerate(np.linspace(0.0, 1.0, count)):
    t = i / fps
    if name == "square_right":
      x0 = int(round(f * (w - 4)))
      shape = (yy >= y0) & (yy < y0 + 4) & (xx >= x0) & (xx < x0 + 4)
    elif name == "disc_down":
      shape = (yy - f * (h - 1)) ** 2 + (xx - cx) ** 2 <= 6.0
    elif name == "cross_diagonal":
      c = 2 + f * (min(h, w) - 5)
      dy, dx = np.abs(yy - c), np.abs(xx - c)
      shape = ((dy <= 0.5) & (dx <= 2.5)) | ((dx <= 0.5) & (dy <= 2.5))
    elif name == "bouncing_ball":  # Touches the floor at every multiple of `period`.
      height = np.abs(np.sin(np.pi * t / period))
      cy, cx = (h - 3) - height * (h - 6), 2 + f * (w - 5)
      shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= 4.0
    elif name == "siren":  # A light in the top rows, on for the first half of each period.
      shape = (yy < 3) & (xx >= w // 2 - 3) & (xx < w // 2 + 3) & ((t / period) % 1.0 < 0.5)
    else:  # engine: a square shaking from side to side at the throbbing rate.
      dx = 2.0 * np.sin(2 * np.pi * t / period)
      shape = (np.abs(yy - h / 2) <= 2.5) & (np.abs(xx - w / 2 - dx) <= 2.5)
    frames[i][shape] = colour


def example(config: ml_collections.ConfigDict, split: str, index: int) -> dict:
  """Example `index` of `split`: inputs {audio [S, 1], video [T, H, W, 3]}, their masks, label [10]."""
  num_samples, (num_frames, h, w) = _shapes(config)
  rate = float(config.dataset.sample_rate)
  per_frame = num_samples // num_frames
  fps = rate / per_frame
  rng = np.random.default_rng([config.seed, _TRAIN if split == "train" else _EVAL, index])
  length = int(num_samples * rng.uniform(config.dataset.min_fraction, 1.0))
  real_frames = -(-length // per_frame)
  clip = 0.05 * rng.normal(size=length)
  video = np.zeros((num_frames, h, w, 3), np.float32)
  video[:real_frames] = 0.1 * rng.normal(size=(real_frames, h, w, 3))
  classes = rng.choice(len(CLASSES), size=rng.integers(1, 4), replace=False)
  for k in classes:
    name = CLASSES[int(k)]
    n = int(length * rng.uniform(0.3, 0.7))
    start = int(rng.integers(0, length - n + 1))
    period = rng.uniform(0.2, 0.35)
    heard, seen = name not in VIDEO_ONLY, name not in AUDIO_ONLY
    if name in AUDIO_VISUAL:
      heard, seen = rng.random() < config.dataset.av_presence, rng.random() < config.dataset.av_presence
      if not (heard or seen):
        heard, seen = (True, False) if rng.random() < 0.5 else (False, True)
    if heard:
      clip[start : start + n] += rng.uniform(0.3, 1.0) * _sound(rng, name, n, rate, period)
    if seen:
      first, last = start // per_frame, min(-(-(start + n) // per_frame), real_frames)
      _draw(rng, name, video[first:last], fps, period)
  samples = np.zeros((num_samples, 1), np.float32)
  samples[:length, 0] = clip
  label = np.zeros(len(CLASSES), np.float32)
  label[classes] = 1.0
  frame_mask = np.arange(num_frames) < real_frames
  return {
    "inputs": {"audio": samples, "video": video},
    "input_mask": {
      "audio": np.arange(num_samples) < length,
      "video": np.broadcast_to(frame_mask[:, None, None], (num_frames, h, w)).copy(),
    },
    "label": label,
  }


def _batch(config, split: str, indices) -> dict:
  return shares.stacked(lambda i: example(config, split, i), indices)


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict]:
  make = functools.partial(_batch, config, "train")
  return shares.indexed_train_batches(make, config.train.global_batch_size, start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict]:
  blank = tuple(config.dataset.blank_streams or ())
  if set(blank) - {"audio", "video"}:
    raise ValueError(f"dataset.blank_streams={blank} may name 'audio' and 'video' only.")

  def make(indices) -> dict:
    batch = _batch(config, "eval", indices)
    for name in blank:
      batch["inputs"][name] = np.zeros_like(batch["inputs"][name])
    return batch

  return shares.indexed_eval_batches(make, num_examples(config, "eval"), config.train.eval_batch_size)
