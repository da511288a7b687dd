"""Position features: Fourier features of pixel positions, or a learned encoding per index.

Axes: M input tokens (pixels), d spatial dimensions, K frequency bands, P position channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax.numpy as jnp
import numpy as np


def grid_positions(shape: Sequence[int]) -> np.ndarray:
  """Positions of a `shape` grid, each axis spaced linearly over [-1, 1]: [*shape, d]."""
  axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
  return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def fourier_features(positions, num_bands: int, max_resolution: int | Sequence[int]):
  """The paper's Fourier features of positions.

  Args:
    positions: [..., d] in [-1, 1].
    num_bands: K, the bands per axis, spaced linearly from 1 to max_resolution / 2.
    max_resolution: mu, one for all axes or one per axis.

  Returns:
    [..., d * (2K + 1)]: all sines (axis-major, then band), then all cosines, then the raw positions.
  """
  positions = jnp.asarray(positions)
  d = positions.shape[-1]
  resolutions = np.broadcast_to(np.asarray(max_resolution, np.float32), (d,))
  if num_bands <= 0 or np.any(resolutions <= 0):
    raise ValueError(f"num_bands={num_bands} and max_resolution={max_resolution} must be positive.")
  bands = np.stack([np.linspace(1.0, r / 2, num_bands, dtype=np.float32) for r in resolutions])  # [d, K]
  angles = np.pi * positions[..., :, None] * bands  # [..., d, K]
  angles = angles.reshape(*positions.shape[:-1], d * num_bands)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles), positions], axis=-1)


def num_fourier_channels(num_dims: int, num_bands: int) -> int:
  return num_dims * (2 * num_bands + 1)


class LearnedPositionEncoding(hk.Module):
  """One learned vector per input index, initialised like the latent array (truncated normal, 0.02)."""

  def __init__(self, num_positions: int, num_channels: int, name: str | None = None):
    super().__init__(name=name)
    if num_positions <= 0 or num_channels <= 0:
      raise ValueError(
        f"num_positions={num_positions} and learned_pos_channels={num_channels} must be positive."
      )
    self.num_positions = num_positions
    self.num_channels = num_channels

  def __call__(self) -> jnp.ndarray:
    init = hk.initializers.TruncatedNormal(stddev=0.02)
    return hk.get_parameter("pos_embs", [self.num_positions, self.num_channels], init=init)  # [M, P]
