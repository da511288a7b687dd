"""The embedded sound default: seeded synthetic multi-label clips, no download (`dataset.name="sounds"`).

Each clip is mono samples [S, 1] at `dataset.sample_rate`: background white noise plus one to three events of
distinct kinds (the labels, multi-hot over the 8 `KINDS`), each at a random onset, duration and level:
- `low_tone`, `high_tone`: a sine of a random pitch in 200-400 Hz / 1,000-1,500 Hz;
- `chirp_up`, `chirp_down`: a sweep between 200 and 1,500 Hz, up or down;
- `low_noise`, `high_noise`: white noise kept to the band 100-500 Hz / 1,200-1,800 Hz;
- `slow_clicks`, `fast_clicks`: a train of 2 ms clicks, 4-8 / 25-40 per second.
A clip's real length is uniform in [`min_fraction`, 1] of the crop; the rest is padding (zeros, and False in
`input_mask` [S]), so the front ends' masks are exercised. Frequencies stay under the Nyquist frequency of
the default 4 kHz.
Example i of the train stream (i = step * global batch + position) and eval example i are pure functions of
(config.seed, split, i): the batch of step s does not depend on the process count, a resumed run sees the
data an uninterrupted one would, and each process makes only its share. Eval (`num_eval_examples`) is read
once, padded to whole batches with `eval_mask`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import ml_collections
import numpy as np

from perceiver_jax.data import shares

KINDS = (
  "low_tone",
  "high_tone",
  "chirp_up",
  "chirp_down",
  "low_noise",
  "high_noise",
  "slow_clicks",
  "fast_clicks",
)
_TRAIN, _EVAL = 0, 1


def _check(config: ml_collections.ConfigDict) -> int:
  """The crop's samples S, checked against dataset.inputs and num_classes."""
  d = config.dataset
  shape = tuple(d.inputs.shape)
  if len(shape) != 2 or shape[1] != 1 or not d.inputs.get("masked", False):
    raise ValueError(
      f"The sounds dataset needs dataset.inputs = dict(shape=(S, 1), masked=True); got {d.inputs}."
    )
  if d.num_classes != len(KINDS):
    raise ValueError(f"dataset.num_classes={d.num_classes} must be {len(KINDS)} for the sounds dataset.")
  if not 0.0 < d.min_fraction <= 1.0:
    raise ValueError(f"dataset.min_fraction={d.min_fraction} must be in (0, 1].")
  return shape[0]


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  field = "num_train_examples" if split == "train" else "num_eval_examples"
  count = config.dataset.get(field)
  if not (isinstance(count, int) and count > 0):
    raise ValueError(f"The sounds dataset needs dataset.{field} (a positive integer); got {count!r}.")
  return count


def _band_noise(rng, n: int, rate: float, low: float, high: float) -> np.ndarray:
  spectrum = np.fft.rfft(rng.normal(size=n))
  freqs = np.fft.rfftfreq(n, 1.0 / rate)
  spectrum[(freqs < low) | (freqs > high)] = 0.0
  noise = np.fft.irfft(spectrum, n)
  return noise / (np.abs(noise).max() + 1e-9)


def _event(rng, kind: int, n: int, rate: float) -> np.ndarray:
  """One event of `n` samples, peak about 1."""
  t = np.arange(n) / rate
  name = KINDS[kind]
  if name.endswith("tone"):
    f = rng.uniform(200, 400) if name == "low_tone" else rng.uniform(1000, 1500)
    return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
  if name.startswith("chirp"):
    f0, f1 = (200.0, 1500.0) if name == "chirp_up" else (1500.0, 200.0)
    duration = n / rate
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * duration)))
  if name.endswith("noise"):
    band = (100, 500) if name == "low_noise" else (1200, 1800)
    return _band_noise(rng, n, rate, *band)
  per_s = rng.uniform(4, 8) if name == "slow_clicks" else rng.uniform(25, 40)
  clicks = np.zeros(n)
  width = max(1, int(0.002 * rate))
  for start in np.arange(rng.uniform(0, rate / per_s), n, rate / per_s).astype(int):
    clicks[start : start + width] = 1.0
  return clicks


def example(config: ml_collections.ConfigDict, split: str, index: int) -> dict[str, np.ndarray]:
  """Example `index` of `split`: inputs float32 [S, 1], input_mask bool [S], label float32 [8] multi-hot."""
  num_samples = _check(config)
  rate = float(config.dataset.sample_rate)
  rng = np.random.default_rng([config.seed, _TRAIN if split == "train" else _EVAL, index])
  length = int(num_samples * rng.uniform(config.dataset.min_fraction, 1.0))
  clip = 0.05 * rng.normal(size=length)
  kinds = rng.choice(len(KINDS), size=rng.integers(1, 4), replace=False)
  for kind in kinds:
    n = int(length * rng.uniform(0.2, 0.6))
    start = rng.integers(0, length - n + 1)
    clip[start : start + n] += rng.uniform(0.3, 1.0) * _event(rng, int(kind), n, rate)
  samples = np.zeros((num_samples, 1), np.float32)
  samples[:length, 0] = clip
  label = np.zeros(len(KINDS), np.float32)
  label[kinds] = 1.0
  return {"inputs": samples, "input_mask": np.arange(num_samples) < length, "label": label}


def _batch(config, split: str, indices) -> dict[str, np.ndarray]:
  return shares.stacked(lambda i: example(config, split, i), indices)


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict]:
  make = functools.partial(_batch, config, "train")
  return shares.indexed_train_batches(make, config.train.global_batch_size, start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict]:
  make = functools.partial(_batch, config, "eval")
  return shares.indexed_eval_batches(make, num_examples(config, "eval"), config.train.eval_batch_size)
