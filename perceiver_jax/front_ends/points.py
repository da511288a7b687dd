"""The point-cloud front end (`input.front_end="points"`): clouds [B, P, 3 + E] -> tokens [B, M, E + F].

A cloud is a set: each point's xyz (in [-1, 1], the data source's unit-cube normalisation) followed by E
optional channels of its own (normals, say). Each point's token is its E channels, then the Fourier
features of its own coordinates (which end with the xyz themselves, so xyz appear once):
F = 3 * (2K + 1) channels for K bands. Nothing depends on a point's index, so a model blind to token
order (the Perceiver) gives the same answer for any order of the points, and an `input_mask` (False:
padding, for clouds with fewer than P points) leaves padded points out.

Bands and maximum frequency. `models.position_encoding.fourier_features` spaces the K bands linearly from
1 to `max_resolution / 2` (mu / 2, the Nyquist frequency of a grid of mu samples over [-1, 1]). The
paper's ImageNet value mu = 224 thus has a maximum frequency of 112, and its ModelNet40 maximum
frequency of 1120, "ten times ImageNet's", is `max_resolution=2240` here.

`grid_shape=(H, W)` instead lays the points out as an H x W image for the grid baselines of Table 4
(ResNet, ViT; the Transformer takes the H * W tokens as they are): the points in one random order, fixed
per run by `permutation_seed` (the same for every cloud, in train and eval), fill the cells in raster
order; points beyond H * W are left out and cells beyond P are zero, as are the cells of masked points
(grid models cannot mask), so no mask is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver_jax.models import position_encoding as pe

POSITION_ENCODINGS = ("fourier", "none")


def grid_order(num_points: int, grid_shape: Sequence[int], seed: int) -> np.ndarray:
  """Indices of the points that fill an H x W grid in raster order: the first H * W of a seeded
  permutation of `num_points`, -1 for cells beyond them. int [H * W]."""
  cells = int(np.prod(grid_shape))
  order = np.random.default_rng(seed).permutation(num_points)[:cells]
  return np.concatenate([order, -np.ones(cells - len(order), order.dtype)])


class PointsFrontEnd(hk.Module):
  """Point clouds [B, P, 3 + E] -> tokens [B, P, E + 3(2K + 1)] (or [B, H * W, ...] on a grid)."""

  def __init__(
    self,
    input_shape: Sequence[int],
    position_encoding: str = "fourier",
    num_bands: int = 64,
    max_resolution: float | Sequence[float] = 2240,
    grid_shape: Sequence[int] | None = None,
    permutation_seed: int = 0,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f"input.position_encoding={position_encoding!r} must be one of {POSITION_ENCODINGS}.")
    if len(input_shape) != 2 or input_shape[0] <= 0 or input_shape[1] < 3:
      raise ValueError(f"Point clouds are [P, 3 + E] with P > 0; got input_shape={tuple(input_shape)}.")
    if grid_shape is not None and (len(grid_shape) != 2 or min(grid_shape) <= 0):
      raise ValueError(f"input.grid_shape={grid_shape!r} must be None or two positive sizes (H, W).")
    self.cloud_shape = tuple(input_shape)  # [P, 3 + E]
    self.position_encoding = position_encoding
    self.num_bands = num_bands
    self.max_resolution = max_resolution
    self.grid_shape = tuple(grid_shape) if grid_shape is not None else None
    self.permutation_seed = permutation_seed
    if position_encoding == "fourier":
      # Validates the band settings now, not at the first step.
      pe.fourier_features(np.zeros((1, 3), np.float32), num_bands, max_resolution)

  def point_features(self, clouds):
    """clouds [..., 3 + E] -> per-point tokens [..., E + F]: extra channels, then features of xyz."""
    xyz, extra = clouds[..., :3], clouds[..., 3:]
    if self.position_encoding == "fourier":
      features = pe.fourier_features(xyz, self.num_bands, self.max_resolution)  # [..., 3(2K + 1)]
    else:
      features = xyz
    return jnp.concatenate([extra, features.astype(clouds.dtype)], axis=-1)

  def __call__(self, clouds, *, input_mask=None, example_keys=None):
    """clouds [B, P, 3 + E], input_mask bool [B, P] or None; example_keys are not used.

    Returns (tokens [B, M, E + F], token_mask bool [B, M] or None), M = P (or H * W on a grid).
    """
    del example_keys  # No per-example randomness here: augmentation is the data source's.
    if clouds.ndim != 3 or clouds.shape[1:] != self.cloud_shape:
      raise ValueError(
        f"Point clouds must be [B, {', '.join(map(str, self.cloud_shape))}] (dataset.num_points, 3 + "
        f"dataset.point_channels); got shape {clouds.shape}."
      )
    if input_mask is not None and input_mask.shape != clouds.shape[:2]:
      raise ValueError(f"input_mask must be [B, P] = {clouds.shape[:2]}; got {input_mask.shape}.")
    tokens = self.point_features(clouds)  # [B, P, E + F]
    if self.grid_shape is None:
      return tokens, input_mask
    if input_mask is not None:
      tokens = jnp.where(input_mask[..., None], tokens, 0.0)  # Padding points become empty cells.
    order = grid_order(self.cloud_shape[0], self.grid_shape, self.permutation_seed)  # [H * W]
    cells = jnp.take(tokens, jnp.asarray(np.maximum(order, 0)), axis=1)  # [B, H * W, E + F]
    cells = jnp.where(jnp.asarray(order >= 0)[None, :, None], cells, 0.0)
    return cells, None
