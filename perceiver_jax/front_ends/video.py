"""The video front end (`input.front_end="video"`): frames [B, T, H, W, C] -> space-time patches, on device.

Axes: B batch, T frames of the crop, H x W pixels, C colour channels; (t, h, w) the patch size in frames and
pixels; T' = T / t, H' = H / h, W' = W / w the patch grid; M = T' H' W' tokens; P position channels.
One example's inputs are frames [T, H, W, C] (`dataset.inputs.video = dict(shape=(T, H, W, C),
masked=True)`; the batch spec's mask is bool [B, T, H, W], one flag per pixel, False on the frames past
the end of a clip shorter than the crop).

Each token is one patch of t x h x w pixels, flattened time-major, then rows, then columns, then colour
(the official Perceiver IO's space-to-depth), with the Fourier features of the patch's (t, y, x) position on
the patch grid, each axis spaced over [-1, 1], concatenated (never added). The paper's video: 32 frames of
224 x 224 in 2 x 8 x 8 patches -> M = 16 x 28 x 28 = 12,544 tokens of 2 * 8 * 8 * 3 = 384 values. Bands
and maximum resolution are the paper's silence; the default resolution is the patch grid (T', H', W').
A patch is real when any of its pixels is; padding pixels are zeroed, so a clip padded with frames gives
the model exactly the tokens of the clip (its last partial patch zero-filled) and masks the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver_jax.models import position_encoding as pe

POSITION_ENCODINGS = ("fourier", "none")


def space_time_patches(frames, patch_size: Sequence[int]):
  """frames [B, T, H, W, C] -> patches [B, T' H' W', t h w C], grid-major (t', y', x'), pixels time-major."""
  b, t_, h_, w_, c = frames.shape
  t, h, w = patch_size
  x = frames.reshape(b, t_ // t, t, h_ // h, h, w_ // w, w, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, T', H', W', t, h, w, C]
  return x.reshape(b, (t_ // t) * (h_ // h) * (w_ // w), t * h * w * c)


class VideoFrontEnd(hk.Module):
  """Frames [B, T, H, W, C] -> tokens [B, T' H' W', t h w C + P]."""

  def __init__(
    self,
    input_shape: Sequence[int],
    patch_size: Sequence[int] = (2, 8, 8),
    position_encoding: str = "fourier",
    num_bands: int = 32,
    max_resolution: Sequence[int] | None = None,
    name: str | None = None,
  ):
    """`patch_size` (t, h, w) in frames and pixels; `max_resolution` (t, y, x) None: the patch grid."""
    super().__init__(name=name)
    if len(input_shape) != 4 or min(input_shape) <= 0:
      raise ValueError(
        "Video inputs are frames [T, H, W, C]: dataset.inputs.video.shape=(T, H, W, C); got "
        f"{tuple(input_shape)}."
      )
    patch_size = tuple(int(p) for p in patch_size)
    sizes = zip(input_shape[:3], patch_size, strict=False)
    divides = len(patch_size) == 3 and all(p > 0 and n % p == 0 for n, p in sizes)
    if not divides:
      raise ValueError(
        f"input.patch_size={patch_size} must be 3 positive sizes (frames, rows, columns) dividing the "
        f"crop's {tuple(input_shape[:3])}."
      )
    if position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f"input.position_encoding={position_encoding!r} must be one of {POSITION_ENCODINGS}.")
    self.video_shape = tuple(int(n) for n in input_shape)  # [T, H, W, C]
    self.patch_size = patch_size
    self.grid = tuple(n // p for n, p in zip(self.video_shape[:3], patch_size, strict=True))  # (T', H', W')
    self.num_tokens = int(np.prod(self.grid))
    self.position_encoding = position_encoding
    self.num_bands = num_bands
    self.max_resolution = tuple(max_resolution or self.grid)
    pe.fourier_features(np.zeros((1, 3), np.float32), num_bands, self.max_resolution)  # Checks the bands.

  def position_features(self):
    """[M, P]: Fourier features of the patches' (t, y, x) grid positions (P = 0 without them)."""
    if self.position_encoding == "none":
      return jnp.zeros((self.num_tokens, 0), jnp.float32)
    positions = pe.grid_positions(self.grid).reshape(self.num_tokens, 3)
    return pe.fourier_features(positions, self.num_bands, self.max_resolution)

  def __call__(self, frames, *, input_mask=None, example_keys=None):
    """frames [B, T, H, W, C], input_mask bool [B, T, H, W] or None.

    Returns (tokens [B, M, t h w C + P], token_mask bool [B, M] or None).
    """
    del example_keys  # No per-example randomness (video dropout is the multimodal front end's).
    if frames.ndim != 5 or frames.shape[1:] != self.video_shape:
      raise ValueError(
        f"Video batches are {tuple(frames.shape[1:])} but dataset.inputs says (T, H, W, C) = "
        f"{self.video_shape}."
      )
    if input_mask is not None:
      if input_mask.shape != frames.shape[:4]:
        raise ValueError(f"input_mask must be [B, T, H, W] = {frames.shape[:4]}; got {input_mask.shape}.")
      frames = jnp.where(input_mask[..., None], frames, 0.0)
    b = frames.shape[0]
    patches = space_time_patches(frames, self.patch_size)  # [B, M, t h w C]
    pos = self.position_features().astype(patches.dtype)  # [M, P]
    tokens = jnp.concatenate([patches, jnp.broadcast_to(pos, (b, *pos.shape))], axis=-1)
    if input_mask is None:
      return tokens, None
    return tokens, space_time_patches(input_mask[..., None], self.patch_size).any(axis=-1)  # [B, M]
