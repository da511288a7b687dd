"""The sequence front end (`input.front_end="sequence"`): [B, M, C] -> tokens [B, M, C + P], on device.

For 1-D inputs of any kind (a patched waveform, a series of feature vectors, a toy modality): each position's
values, then the position features of its index (Fourier features of positions spaced over [-1, 1], a
learned vector per index, or none), concatenated as the image front end does. The mask, bool [B, M], passes
through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver_jax.models import position_encoding as pe

POSITION_ENCODINGS = ("fourier", "learned", "none")


class SequenceFrontEnd(hk.Module):
  """Sequences [B, M, C] -> tokens [B, M, C + P]."""

  def __init__(
    self,
    input_shape: Sequence[int],
    position_encoding: str = "fourier",
    num_bands: int = 16,
    max_resolution: int | None = None,
    learned_pos_channels: int = 64,
    name: str | None = None,
  ):
    """`max_resolution`: the Fourier features' top frequency's resolution; None: the sequence length."""
    super().__init__(name=name)
    if len(input_shape) != 2 or min(input_shape) <= 0:
      raise ValueError(f"Sequences are [M, C] with positive sizes; got input_shape={tuple(input_shape)}.")
    if position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f"input.position_encoding={position_encoding!r} must be one of {POSITION_ENCODINGS}.")
    self.length, self.channels = input_shape
    self.position_encoding = position_encoding
    self.num_bands = num_bands
    self.max_resolution = max_resolution or self.length
    self.learned_pos_channels = learned_pos_channels
    if position_encoding == "fourier":
      pe.fourier_features(np.zeros((1, 1), np.float32), num_bands, self.max_resolution)  # Checks the bands.

  def position_features(self):
    """[M, P] position features of the indices."""
    if self.position_encoding == "fourier":
      positions = pe.grid_positions((self.length,))  # [M, 1]
      return pe.fourier_features(positions, self.num_bands, self.max_resolution)
    if self.position_encoding == "learned":
      return pe.LearnedPositionEncoding(self.length, self.learned_pos_channels, name="position")()
    return jnp.zeros((self.length, 0), jnp.float32)

  def __call__(self, inputs, *, input_mask=None, example_keys=None):
    """inputs [B, M, C], input_mask bool [B, M] or None -> (tokens [B, M, C + P], token_mask or None)."""
    del example_keys  # No per-example randomness.
    if inputs.shape[1:] != (self.length, self.channels):
      want = (self.length, self.channels)
      raise ValueError(f"Sequences are {tuple(inputs.shape[1:])} but dataset.inputs says {want}.")
    if input_mask is not None and input_mask.shape != inputs.shape[:2]:
      raise ValueError(f"input_mask must be [B, M] = {inputs.shape[:2]}; got {input_mask.shape}.")
    pos = self.position_features().astype(inputs.dtype)  # [M, P]
    tokens = jnp.concatenate([inputs, jnp.broadcast_to(pos, (inputs.shape[0], *pos.shape))], axis=-1)
    return tokens, input_mask
