"""Sound front ends, on device: raw waveform patches (`input.front_end="audio"`) or log-mel values (`"mel"`).

Axes: B batch, S samples of the crop, p samples per patch, T frames (or patches), F mel bands, P position
channels. One example's inputs are mono samples [S, 1] (`dataset.inputs = dict(shape=(S, 1), masked=True)`:
the batch spec's mask has one flag per sample, [B, S], False on the tail of a clip shorter than the crop).

- `audio` (the paper's raw-audio model): [B, S, 1] -> T = S / p non-overlapping patches of p samples, each
  with the Fourier features of its time position (positions spaced over [-1, 1]) concatenated:
  tokens [B, T, p + P]. The paper: 48 kHz, S = 61,440 (1.28 s), p = 128, so T = 480 tokens. A patch is
  real when any of its samples is; padding samples are zeroed, so a padded clip gives the model exactly
  the tokens of the clip and masks the rest.
- `mel`: [B, S, 1] -> a log-mel spectrogram computed here (framing + rfft + a mel filterbank matrix, all jnp,
  so it compiles with the model and runs on the accelerator, next to the step), each time-frequency value a
  token with 2-D (time, band) Fourier features: tokens [B, T * F, 1 + P]. The paper gives no mel settings;
  the defaults are ours: a 2,048-sample Hann window (42.7 ms at 48 kHz) every 1,200 samples (25 ms), the
  2,048-point FFT's power, 96 HTK mel bands from 20 Hz to Nyquist (the same triangles as
  tf.signal.linear_to_mel_weight_matrix), log(mel + 1e-6), standardised by fixed constants
  (`log_mel_mean`, `log_mel_std`). For 61,440 samples that is T = 1 + (61,440 - 2,048) // 1,200 = 50 frames
  x 96 bands = the paper's 4,800 inputs. A frame is real when its first sample is. SpecAugment (Park et
  al. 2019; the paper gives no settings) in training only: `num_time_masks` spans of up to
  `max_time_mask` frames and `num_freq_masks` spans of up to `max_freq_mask` bands, set to 0 (the
  standardised mean), drawn from each example's key.
Both take `position_encoding="none"` to leave the position features out.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.models import position_encoding as pe

POSITION_ENCODINGS = ("fourier", "none")


def _check_samples(input_shape: Sequence[int]) -> int:
  if len(input_shape) != 2 or input_shape[1] != 1 or input_shape[0] <= 0:
    raise ValueError(
      f"Audio inputs are mono samples [S, 1]: dataset.inputs.shape=(S, 1); got {tuple(input_shape)}."
    )
  return int(input_shape[0])


def _check_encoding(position_encoding: str) -> str:
  if position_encoding not in POSITION_ENCODINGS:
    raise ValueError(f"input.position_encoding={position_encoding!r} must be one of {POSITION_ENCODINGS}.")
  return position_encoding


def _checked(inputs, input_mask, num_samples: int):
  """inputs [B, S, 1], input_mask [B, S] or None -> samples [B, S] with padding zeroed."""
  if inputs.shape[1:] != (num_samples, 1):
    raise ValueError(
      f"Audio batches are {tuple(inputs.shape[1:])} but dataset.inputs says ({num_samples}, 1)."
    )
  samples = inputs[..., 0]
  if input_mask is None:
    return samples
  if input_mask.shape != samples.shape:
    raise ValueError(f"input_mask must be [B, S] = {samples.shape}; got {input_mask.shape}.")
  return jnp.where(input_mask, samples, 0.0)


class AudioFrontEnd(hk.Module):
  """Raw samples [B, S, 1] -> patch tokens [B, S / samples_per_patch, samples_per_patch + P]."""

  def __init__(
    self,
    input_shape: Sequence[int],
    samples_per_patch: int = 128,
    position_encoding: str = "fourier",
    num_bands: int = 64,
    max_resolution: int | None = None,
    name: str | None = None,
  ):
    """`max_resolution`: the Fourier features' top frequency's resolution; None: the patch count."""
    super().__init__(name=name)
    self.num_samples = _check_samples(input_shape)
    if samples_per_patch <= 0 or self.num_samples % samples_per_patch:
      raise ValueError(
        f"input.samples_per_patch={samples_per_patch} must divide the crop's {self.num_samples} samples."
      )
    self.samples_per_patch = samples_per_patch
    self.num_patches = self.num_samples // samples_per_patch
    self.position_encoding = _check_encoding(position_encoding)
    self.num_bands = num_bands
    self.max_resolution = max_resolution or self.num_patches
    pe.fourier_features(np.zeros((1, 1), np.float32), num_bands, self.max_resolution)  # Checks the bands.

  def position_features(self):
    """[T, P]: Fourier features of the patches' time positions (P = 0 without position encoding)."""
    if self.position_encoding == "none":
      return jnp.zeros((self.num_patches, 0), jnp.float32)
    return pe.fourier_features(pe.grid_positions((self.num_patches,)), self.num_bands, self.max_resolution)

  def __call__(self, inputs, *, input_mask=None, example_keys=None):
    """inputs [B, S, 1], input_mask bool [B, S] or None -> (tokens [B, T, p + P], mask [B, T] or None)."""
    del example_keys  # No per-example randomness.
    samples = _checked(inputs, input_mask, self.num_samples)  # [B, S]
    b = samples.shape[0]
    patches = samples.reshape(b, self.num_patches, self.samples_per_patch)  # [B, T, p]
    pos = self.position_features().astype(patches.dtype)  # [T, P]
    tokens = jnp.concatenate([patches, jnp.broadcast_to(pos, (b, *pos.shape))], axis=-1)
    if input_mask is None:
      return tokens, None
    return tokens, input_mask.reshape(b, self.num_patches, self.samples_per_patch).any(axis=-1)


def hz_to_mel(hz):
  """The HTK mel scale, as tf.signal: 1127 ln(1 + f / 700)."""
  return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_filterbank(
  num_mel_bins: int, num_spectrogram_bins: int, sample_rate: float, lower_hz: float, upper_hz: float
) -> np.ndarray:
  """[num_spectrogram_bins, num_mel_bins] triangles, equally spaced in HTK mel; the DC bin weighs 0."""
  if not 0.0 <= lower_hz < upper_hz <= sample_rate / 2:
    raise ValueError(
      f"input.lower_hz={lower_hz} and upper_hz={upper_hz} must satisfy 0 <= lower < upper <= "
      f"sample_rate / 2 = {sample_rate / 2}."
    )
  freqs = np.linspace(0.0, sample_rate / 2, num_spectrogram_bins)[1:]  # The DC bin is left out.
  mel = hz_to_mel(freqs)[:, None]  # [K - 1, 1]
  edges = np.linspace(hz_to_mel(lower_hz), hz_to_mel(upper_hz), num_mel_bins + 2)
  left, center, right = edges[:-2], edges[1:-1], edges[2:]  # [F] each
  weights = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
  return np.pad(weights, [(1, 0), (0, 0)]).astype(np.float32)


def log_mel(samples, *, frame_length: int, frame_step: int, filterbank: np.ndarray):
  """samples [B, S] -> log(mel power + 1e-6) [B, T, F], T = 1 + (S - frame_length) // frame_step."""
  num_frames = 1 + (samples.shape[1] - frame_length) // frame_step
  index = frame_step * np.arange(num_frames)[:, None] + np.arange(frame_length)  # [T, W]
  frames = samples[:, index] * jnp.asarray(np.hanning(frame_length + 1)[:-1], samples.dtype)  # [B, T, W]
  power = jnp.abs(jnp.fft.rfft(frames, axis=-1)) ** 2  # [B, T, W/2 + 1]
  return jnp.log(power @ jnp.asarray(filterbank, power.dtype) + 1e-6)


def spec_augment(key, values, num_masks: int, max_width: int, axis: int):
  """values [T, F]: `num_masks` spans of 0..max_width positions along `axis` set to 0."""
  size = values.shape[axis]
  keep = jnp.ones(size, bool)
  for k in jax.random.split(key, num_masks):
    kw, ks = jax.random.split(k)
    width = jax.random.randint(kw, (), 0, max_width + 1)
    start = jax.random.randint(ks, (), 0, max(size - max_width, 0) + 1)
    pos = jnp.arange(size)
    keep &= (pos < start) | (pos >= start + width)
  keep = keep[:, None] if axis == 0 else keep[None, :]
  return jnp.where(keep, values, 0.0)


class MelFrontEnd(hk.Module):
  """Raw samples [B, S, 1] -> one token per log-mel value, [B, T * F, 1 + P]."""

  def __init__(
    self,
    input_shape: Sequence[int],
    sample_rate: int = 48_000,
    frame_length: int = 2048,
    frame_step: int = 1200,
    num_mel_bins: int = 96,
    lower_hz: float = 20.0,
    upper_hz: float | None = None,
    log_mel_mean: float = -6.0,
    log_mel_std: float = 5.0,
    position_encoding: str = "fourier",
    num_bands: int = 16,
    max_resolution: Sequence[int] | None = None,
    num_time_masks: int = 2,
    max_time_mask: int = 5,
    num_freq_masks: int = 2,
    max_freq_mask: int = 10,
    name: str | None = None,
  ):
    """`upper_hz` None: Nyquist. `max_resolution` (time, band) None: (T, F)."""
    super().__init__(name=name)
    self.num_samples = _check_samples(input_shape)
    if not 0 < frame_length <= self.num_samples or frame_step <= 0:
      raise ValueError(
        f"input.frame_length={frame_length} must be in (0, {self.num_samples}] and "
        f"input.frame_step={frame_step} positive."
      )
    self.frame_length, self.frame_step = frame_length, frame_step
    self.num_frames = 1 + (self.num_samples - frame_length) // frame_step
    self.num_mel_bins = num_mel_bins
    self.filterbank = mel_filterbank(
      num_mel_bins, frame_length // 2 + 1, sample_rate, lower_hz, upper_hz or sample_rate / 2
    )
    self.log_mel_mean, self.log_mel_std = log_mel_mean, log_mel_std
    self.position_encoding = _check_encoding(position_encoding)
    self.num_bands = num_bands
    self.max_resolution = tuple(max_resolution or (self.num_frames, num_mel_bins))
    pe.fourier_features(np.zeros((1, 2), np.float32), num_bands, self.max_resolution)  # Checks the bands.
    self.augment = (num_time_masks, max_time_mask, num_freq_masks, max_freq_mask)
    self.grid = (self.num_frames, num_mel_bins)

  def spectrogram(self, samples):
    """samples [B, S] -> standardised log-mel [B, T, F]."""
    values = log_mel(
      samples, frame_length=self.frame_length, frame_step=self.frame_step, filterbank=self.filterbank
    )
    return (values - self.log_mel_mean) / self.log_mel_std

  def __call__(self, inputs, *, input_mask=None, example_keys=None, is_training: bool = False):
    """inputs [B, S, 1], input_mask [B, S] or None -> (tokens [B, T * F, 1 + P], mask [B, T * F] or None)."""
    samples = _checked(inputs, input_mask, self.num_samples)
    values = self.spectrogram(samples)  # [B, T, F]
    num_time, max_time, num_freq, max_freq = self.augment
    if is_training and (num_time or num_freq):
      if example_keys is None:
        raise ValueError("SpecAugment needs example_keys, one key per example.")

      def augment(key, v):
        kt, kf = jax.random.split(key)
        return spec_augment(kf, spec_augment(kt, v, num_time, max_time, 0), num_freq, max_freq, 1)

      values = jax.vmap(augment)(example_keys, values)
    b, t, f = values.shape
    pos = pe.fourier_features(pe.grid_positions(self.grid), self.num_bands, self.max_resolution)  # [T, F, P]
    pos = pos[..., :0] if self.position_encoding == "none" else pos
    pos = jnp.broadcast_to(pos.astype(values.dtype), (b, *pos.shape))
    tokens = jnp.concatenate([values[..., None], pos], axis=-1).reshape(b, t * f, -1)
    if input_mask is None:
      return tokens, None
    frame_real = input_mask[:, self.frame_step * np.arange(t)]  # [B, T]: a frame's first sample is real.
    return tokens, jnp.repeat(frame_real, f, axis=1)
