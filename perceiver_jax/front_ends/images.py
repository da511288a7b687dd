"""The image front end (`input.front_end="image"`): images [B, H, W, C] -> tokens [B, M, C + P], on device.

Position features are those of the grid that is fed (the crop, as in the paper), concatenated to the
pixel values, never added. A permutation, if any, comes after: every pixel keeps its own position
features, so a model blind to token order (the Perceiver) gives the same answer.
- `none`: pixels in raster order.
- `fixed`: one permutation drawn from `permutation_seed` with numpy: the same for every image, in train
  and eval, on every host and after a restart.
- `random`: a fresh permutation per example, from that example's key (`example_keys`).
Perceiver IO's learned-position ImageNet network is this front end with `pixel_channels` (a 1x1
convolution of the pixels, i.e. one Linear per pixel, `pixel_projection`) and `project_positions` (a Linear
of the position features, `position_projection`).

`ConvImageFrontEnd` (`input.front_end="image_conv"`) is Perceiver IO's conv network's: a 7x7 stride-2
convolution without bias, BatchNorm (its statistics Haiku state), ReLU and a 3x3 stride-2 max-pool, all with
TensorFlow's SAME padding (224 -> 112 -> 56), then Fourier features of the pooled grid concatenated to the
features: [B, (H/4) (W/4), conv_channels + P].
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.models import position_encoding as pe

POSITION_ENCODINGS = ("fourier", "learned", "none")
PERMUTATIONS = ("none", "fixed", "random")


def fixed_permutation(num_tokens: int, seed: int) -> np.ndarray:
  """The `fixed` permutation of `num_tokens` tokens: a pure function of the seed."""
  return np.random.default_rng(seed).permutation(num_tokens)


def random_permutations(example_keys, num_tokens: int):
  """One permutation of `num_tokens` per example key: [B] keys -> int32 [B, M]."""
  return jax.vmap(lambda key: jax.random.permutation(key, num_tokens))(example_keys)


class ImageFrontEnd(hk.Module):
  """Images [B, H, W, C] -> tokens [B, M, C + P] with M = H * W (or the resized grid's)."""

  def __init__(
    self,
    input_shape: Sequence[int],
    position_encoding: str = "fourier",
    num_bands: int = 64,
    max_resolution: int | Sequence[int] = 224,
    learned_pos_channels: int = 128,
    permutation: str = "none",
    permutation_seed: int = 0,
    resize_to: int | None = None,
    pixel_channels: int | None = None,
    project_positions: bool = False,
    name: str | None = None,
  ):
    """`pixel_channels`: a 1x1 convolution of the pixels to this many channels (None: the pixels as they
    are); `project_positions`: a Linear (P -> P, with bias) of the position features."""
    super().__init__(name=name)
    if position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f"input.position_encoding={position_encoding!r} must be one of {POSITION_ENCODINGS}.")
    if permutation not in PERMUTATIONS:
      raise ValueError(f"input.permutation={permutation!r} must be one of {PERMUTATIONS}.")
    if resize_to is not None and resize_to <= 0:
      raise ValueError(f"input.resize_to={resize_to} must be positive (or None).")
    if pixel_channels is not None and pixel_channels <= 0:
      raise ValueError(f"input.pixel_channels={pixel_channels} must be positive (or None).")
    if len(input_shape) != 3 or min(input_shape) <= 0:
      raise ValueError(f"Images are [H, W, C] with positive sizes; got input_shape={tuple(input_shape)}.")
    self.image_shape = tuple(input_shape)  # [H, W, C]
    self.grid_shape = (resize_to, resize_to) if resize_to else self.image_shape[:2]
    self.position_encoding = position_encoding
    self.num_bands = num_bands
    self.max_resolution = max_resolution
    self.learned_pos_channels = learned_pos_channels
    self.permutation = permutation
    self.permutation_seed = permutation_seed
    self.resize_to = resize_to
    self.pixel_channels = pixel_channels
    self.project_positions = project_positions
    self.num_tokens = int(np.prod(self.grid_shape))
    if position_encoding == "fourier":
      # Validates the band settings now, not at the first step.
      pe.fourier_features(np.zeros((1, 2), np.float32), num_bands, max_resolution)

  def num_position_channels(self) -> int:
    if self.position_encoding == "fourier":
      return pe.num_fourier_channels(2, self.num_bands)
    return self.learned_pos_channels if self.position_encoding == "learned" else 0

  def position_features(self):
    """[M, P] position features in raster order (no permutation)."""
    if self.position_encoding == "fourier":
      positions = pe.grid_positions(self.grid_shape).reshape(self.num_tokens, 2)
      return pe.fourier_features(positions, self.num_bands, self.max_resolution)
    if self.position_encoding == "learned":
      return pe.LearnedPositionEncoding(self.num_tokens, self.learned_pos_channels, name="position")()
    return jnp.zeros((self.num_tokens, 0), jnp.float32)

  def permutations(self, batch_size: int, example_keys=None):
    """int32 [B, M] token order per example, or None for raster order."""
    if self.permutation == "none":
      return None
    if self.permutation == "fixed":
      perm = fixed_permutation(self.num_tokens, self.permutation_seed)
      return jnp.broadcast_to(jnp.asarray(perm, jnp.int32), (batch_size, self.num_tokens))
    if example_keys is None:
      raise ValueError("input.permutation='random' needs example_keys, one key per example.")
    return random_permutations(example_keys, self.num_tokens)

  def __call__(self, images, *, input_mask=None, example_keys=None):
    """images [B, H, W, C], input_mask bool [B, H, W] or None, example_keys [B] (for `random`).

    Returns (tokens [B, M, C + P], token_mask bool [B, M] or None): the mask in the tokens' order.
    """
    if images.ndim != 4:
      raise ValueError(f"Images must be [B, H, W, C]; got shape {images.shape}.")
    if images.shape[1:] != self.image_shape:
      raise ValueError(
        f"Images are {tuple(images.shape[1:])} but dataset.image_size and dataset.num_channels say "
        f"{self.image_shape}."
      )
    b, c = images.shape[0], images.shape[-1]
    if input_mask is not None:
      if input_mask.shape != images.shape[:3]:
        raise ValueError(f"input_mask must be [B, H, W] = {images.shape[:3]}; got {input_mask.shape}.")
      if self.resize_to:
        raise ValueError("input.resize_to cannot resize an input_mask; feed whole images or drop resize_to.")
      input_mask = input_mask.reshape(b, self.num_tokens)  # [B, M]
    if self.resize_to:
      images = jax.image.resize(images, (b, *self.grid_shape, c), method="bilinear")
    pixels = images.reshape(b, self.num_tokens, c)  # [B, M, C]
    if self.pixel_channels:
      pixels = hk.Linear(self.pixel_channels, name="pixel_projection")(pixels)  # [B, M, pixel_channels]
    pos = self.position_features()  # [M, P]
    if self.project_positions:
      pos = hk.Linear(pos.shape[-1], name="position_projection")(pos)
    pos = pos.astype(pixels.dtype)
    tokens = jnp.concatenate([pixels, jnp.broadcast_to(pos, (b, *pos.shape))], axis=-1)
    perm = self.permutations(b, example_keys)
    if perm is not None:
      tokens = jnp.take_along_axis(tokens, perm[..., None], axis=1)
      if input_mask is not None:
        input_mask = jnp.take_along_axis(input_mask, perm, axis=1)
    return tokens, input_mask  # [B, M, C + P], [B, M] or None


class ConvImageFrontEnd(hk.Module):
  """Images [B, H, W, C] -> tokens [B, M, conv_channels + P], M = ceil(H / 4) ceil(W / 4).

  Perceiver IO's conv front end (see the module docstring). BatchNorm (decay 0.9, eps 1e-5) normalises by
  the batch's statistics in training and by their moving averages (state) otherwise.
  """

  def __init__(
    self,
    input_shape: Sequence[int],
    conv_channels: int = 64,
    position_encoding: str = "fourier",
    num_bands: int = 64,
    max_resolution: int | Sequence[int] = 56,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if position_encoding != "fourier":
      raise ValueError(f"input.position_encoding={position_encoding!r}: the conv front end takes 'fourier'.")
    if conv_channels <= 0:
      raise ValueError(f"input.conv_channels={conv_channels} must be positive.")
    if len(input_shape) != 3 or min(input_shape) <= 0:
      raise ValueError(f"Images are [H, W, C] with positive sizes; got input_shape={tuple(input_shape)}.")
    self.image_shape = tuple(input_shape)
    # SAME padding: each stride-2 stage gives ceil(n / 2); both, ceil(n / 4).
    self.grid_shape = tuple((n + 3) // 4 for n in self.image_shape[:2])
    self.num_tokens = int(np.prod(self.grid_shape))
    self.conv_channels = conv_channels
    self.position_encoding = position_encoding
    self.num_bands = num_bands
    self.max_resolution = max_resolution
    pe.fourier_features(np.zeros((1, 2), np.float32), num_bands, max_resolution)

  def __call__(self, images, *, input_mask=None, example_keys=None, is_training: bool = False):
    """images [B, H, W, C] -> (tokens [B, M, conv_channels + P], None)."""
    del example_keys  # No per-example randomness.
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise ValueError(
        f"Images are {tuple(images.shape)} but dataset.image_size and dataset.num_channels say "
        f"[B, *{self.image_shape}]."
      )
    if input_mask is not None:
      raise ValueError("input.front_end='image_conv' takes no input_mask; feed whole images.")
    x = hk.Conv2D(self.conv_channels, 7, stride=2, with_bias=False, padding="SAME", name="conv")(images)
    x = hk.BatchNorm(True, True, decay_rate=0.9, eps=1e-5, name="batchnorm")(x, is_training=is_training)
    x = hk.max_pool(jax.nn.relu(x), window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    b = x.shape[0]
    features = x.reshape(b, self.num_tokens, self.conv_channels)  # [B, M, conv_channels]
    positions = pe.grid_positions(self.grid_shape).reshape(self.num_tokens, 2)
    pos = pe.fourier_features(positions, self.num_bands, self.max_resolution).astype(features.dtype)
    tokens = jnp.concatenate([features, jnp.broadcast_to(pos, (b, *pos.shape))], axis=-1)
    return tokens, None
