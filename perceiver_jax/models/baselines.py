"""The paper's baselines (Tables 1 and 2): ResNet-50, ViT-B-16 and a Transformer on Fourier-feature tokens.

Axes: B batch, M input tokens, C input channels (pixel values and position features), H x W the token
grid, T patches, D model width.

Every baseline takes the front end's tokens [B, M, C] in the order they come. The grid models (ResNet, ViT)
reshape them to the grid in that order: under a permutation they see scrambled images, which is what the
permuted-ImageNet experiment measures. The Transformer attends over all tokens with no grid assumption.
The registry (`perceiver_jax.models.MODELS`) names them `resnet` (any depth: ResNet-50 on
ImageNet, a ResNet-10 on digits), `vit` and `transformer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax.numpy as jnp

from perceiver_jax.models.attention import SelfAttentionBlock
from perceiver_jax.models.checks import check_positive
from perceiver_jax.models.dense import layer_norm

POOLS = ("token", "mean")


def _positive_sequence(length: int, **values: Sequence[int]) -> None:
  for name, value in values.items():
    if len(value) != length:
      raise ValueError(f"{name}={tuple(value)} must have {length} entries.")
    for v in value:
      check_positive(**{name: v})


def _grid(tokens, grid_shape: tuple[int, int], model: str):
  """tokens [B, M, C] -> [B, H, W, C], taking the tokens in the order they come."""
  if tokens.ndim != 3:
    raise ValueError(f"{model} takes tokens [B, M, C]; got shape {tokens.shape}.")
  h, w = grid_shape
  if tokens.shape[1] != h * w:
    raise ValueError(f"{model}: {tokens.shape[1]} tokens do not fill grid_shape={grid_shape}.")
  return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2])


def patchify(images, patch_size: int):
  """Non-overlapping p x p patches in raster order: images [B, H, W, C] -> [B, T, p*p*C].

  Each patch is flattened row by row, so a linear map of the patches is a stride-p convolution.
  """
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)  # [B, H/p, W/p, p, p, C]
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def _check_encoder(width: int, num_heads: int, dropout_rate: float, attention_chunk_size: int | None) -> None:
  """The checks ViT and Transformer share on the arguments of their `_encoder`."""
  if width % num_heads:
    raise ValueError(f"num_heads={num_heads} does not divide width={width}.")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1).")
  if attention_chunk_size is not None:
    check_positive(attention_chunk_size=attention_chunk_size)


def _encoder(x, model: hk.Module, is_training: bool):
  """`model.num_layers` pre-LayerNorm self-attention blocks, then a final LayerNorm: [B, T, D] -> [B, T, D].

  `model` (a ViT or Transformer) gives num_layers, num_heads, widening_factor, dropout_rate and:
  `remat`, every block recomputed in the backward pass (`hk.remat`), so that only the [B, T, D] stream
  between blocks is kept, not each block's [B, heads, T, T] attention; `attention_chunk_size`, attention
  over the keys in chunks of this many (exact), so that even one block's needs O(T x chunk), not O(T^2).
  """
  for i in range(model.num_layers):
    block = SelfAttentionBlock(
      num_heads=model.num_heads,
      widening_factor=model.widening_factor,
      dropout_rate=model.dropout_rate,
      chunk_size=model.attention_chunk_size,
      name=f"block_{i}",
    )
    call = lambda y, block=block: block(y, is_training=is_training)
    x = (hk.remat(call) if model.remat else call)(x)
  # Pre-LN blocks leave the residual stream unnormalised; the head needs it normalised.
  return layer_norm(x, "final_norm")


def _head(x, num_classes: int):
  # Zero-initialised like the Perceiver's and big_vision's: the first steps start from uniform logits.
  return hk.Linear(num_classes, w_init=hk.initializers.Constant(0.0), name="classifier")(x)


class ResNet(hk.Module):
  """ResNet (FF): Haiku's `hk.nets.ResNet` on the token grid. Tokens [B, M, C] -> logits [B, num_classes].

  The defaults are ResNet-50 (v1, bottleneck blocks 3-4-6-3, 7x7 stride-2 stem): 25,557,032 parameters at
  3 input channels and 1000 classes, plus 7 * 7 * (C - 3) * 64 for the C-channel stem. Smaller grids (the
  8x8 digits) take fewer or narrower blocks (`blocks_per_group`, `channels_per_group`, `bottleneck=False`)
  and a small stride-1 stem (`initial_kernel_shape`, `initial_stride`). Haiku's ResNet always follows the
  stem by a 3x3 stride-2 max-pool, so an 8x8 grid enters the first block group at 4x4.
  BatchNorm statistics live in Haiku state and are updated only when `is_training`.
  """

  takes_grid_shape = True

  def __init__(
    self,
    num_classes: int,
    grid_shape: Sequence[int],
    blocks_per_group: Sequence[int] = (3, 4, 6, 3),
    channels_per_group: Sequence[int] = (256, 512, 1024, 2048),
    bottleneck: bool = True,
    strides: Sequence[int] = (1, 2, 2, 2),
    initial_channels: int = 64,
    initial_kernel_shape: int = 7,
    initial_stride: int = 2,
    bn_decay_rate: float = 0.9,
    name: str | None = None,
  ):
    super().__init__(name=name)
    check_positive(
      num_classes=num_classes,
      initial_channels=initial_channels,
      initial_kernel_shape=initial_kernel_shape,
      initial_stride=initial_stride,
    )
    _positive_sequence(2, grid_shape=grid_shape)
    # Haiku's ResNet has exactly four block groups.
    _positive_sequence(
      4, blocks_per_group=blocks_per_group, channels_per_group=channels_per_group, strides=strides
    )
    if bottleneck and any(c % 4 for c in channels_per_group):
      raise ValueError(
        f"channels_per_group={tuple(channels_per_group)} must be multiples of 4 with bottleneck blocks."
      )
    if not 0.0 <= bn_decay_rate < 1.0:
      raise ValueError(f"bn_decay_rate={bn_decay_rate} must be in [0, 1).")
    self.num_classes = num_classes
    self.grid_shape = tuple(grid_shape)
    self.blocks_per_group = tuple(blocks_per_group)
    self.channels_per_group = tuple(channels_per_group)
    self.bottleneck = bottleneck
    self.strides = tuple(strides)
    self.initial_channels = initial_channels
    self.initial_kernel_shape = initial_kernel_shape
    self.initial_stride = initial_stride
    self.bn_decay_rate = bn_decay_rate

  def __call__(self, tokens, *, is_training: bool):
    """tokens [B, M, C] (M = H * W) -> logits [B, num_classes]."""
    images = _grid(tokens, self.grid_shape, "resnet")  # [B, H, W, C]
    net = hk.nets.ResNet(
      blocks_per_group=self.blocks_per_group,
      num_classes=self.num_classes,
      bn_config={"decay_rate": self.bn_decay_rate},
      bottleneck=self.bottleneck,
      channels_per_group=self.channels_per_group,
      # Projections wherever a group changes the width or the resolution, as in ResNet-50.
      use_projection=self._projections(),
      initial_conv_config={
        "output_channels": self.initial_channels,
        "kernel_shape": self.initial_kernel_shape,
        "stride": self.initial_stride,
      },
      strides=self.strides,
      name="resnet",
    )
    return net(images, is_training=is_training)

  def _projections(self) -> tuple[bool, ...]:
    widths = (self.initial_channels, *self.channels_per_group)
    return tuple(widths[i] != widths[i + 1] or self.strides[i] != 1 for i in range(4))


class ViT(hk.Module):
  """ViT (FF): a Vision Transformer on patches of the token grid. Tokens [B, M, C] -> logits [B, num_classes].

  Patches of `patch_size` x `patch_size` tokens are flattened and embedded by one linear layer (a
  stride-`patch_size` convolution), a learned position embedding is added per patch, then `num_layers`
  pre-LayerNorm blocks, a final LayerNorm and a zero-initialised linear head. `pool='token'` reads a
  learned class token, as the original ViT (Dosovitskiy et al. 2021) whose ImageNet result Table 1 cites;
  `pool='mean'` averages the patches (big_vision's default, 'gap'). The defaults are ViT-B/16: 12 layers,
  width 768, 12 heads, MLP 3072: 86,567,656 parameters at 224x224x3 and 1000 classes, plus
  16 * 16 * (C - 3) * 768 for the C-channel patch embedding.
  """

  takes_grid_shape = True

  def __init__(
    self,
    num_classes: int,
    grid_shape: Sequence[int],
    patch_size: int = 16,
    width: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    widening_factor: int = 4,
    dropout_rate: float = 0.0,
    pool: str = "token",
    remat: bool = False,
    attention_chunk_size: int | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    check_positive(
      num_classes=num_classes,
      patch_size=patch_size,
      width=width,
      num_layers=num_layers,
      num_heads=num_heads,
      widening_factor=widening_factor,
    )
    _positive_sequence(2, grid_shape=grid_shape)
    if any(n % patch_size for n in grid_shape):
      raise ValueError(f"patch_size={patch_size} does not divide grid_shape={tuple(grid_shape)}.")
    _check_encoder(width, num_heads, dropout_rate, attention_chunk_size)
    if pool not in POOLS:
      raise ValueError(f"pool={pool!r} must be one of {POOLS}.")
    self.num_classes = num_classes
    self.grid_shape = tuple(grid_shape)
    self.patch_size = patch_size
    self.width = width
    self.num_layers = num_layers
    self.num_heads = num_heads
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate
    self.remat = remat
    self.attention_chunk_size = attention_chunk_size
    self.pool = pool

  def __call__(self, tokens, *, is_training: bool):
    """tokens [B, M, C] (M = H * W) -> logits [B, num_classes]."""
    x = patchify(_grid(tokens, self.grid_shape, "vit"), self.patch_size)  # [B, T, p*p*C]
    b = x.shape[0]
    x = hk.Linear(self.width, name="patch_embedding")(x)  # [B, T, D]
    if self.pool == "token":
      cls = hk.get_parameter("class_token", [1, 1, self.width], x.dtype, init=jnp.zeros)
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)  # [B, 1 + T, D]
    init = hk.initializers.TruncatedNormal(stddev=0.02)
    pos = hk.get_parameter("position_embedding", list(x.shape[1:]), init=init)  # [1 + T, D] or [T, D]
    x = x + pos.astype(x.dtype)
    x = _encoder(x, self, is_training)
    pooled = x[:, 0] if self.pool == "token" else jnp.mean(x, axis=1)  # [B, D]
    return _head(pooled, self.num_classes)


class Transformer(hk.Module):
  """Transformer (64x64, FF): self-attention over every token. Tokens [B, M, C] -> logits [B, num_classes].

  A linear embedding of each token (its pixel values and Fourier features carry its position, so there is no
  position embedding), `num_layers` pre-LayerNorm blocks, a final LayerNorm, the mean over tokens and a
  zero-initialised linear head. With no grid assumption and a mean, its output ignores the token order.

  The paper does not give its size; the defaults match the Perceiver's 707 GFLOPs per image at M = 64 * 64
  = 4,096 tokens of C = 261 channels. Counting FLOPs as 2 x multiply-adds of the matmuls, one block of width
  D and MLP widening w costs (8 + 4w) M D^2 (q, k, v, output projections and the MLP) + 4 M^2 D (logits and
  weighted sum). At D = 512, w = 4: 24 * 4096 * 512^2 + 4 * 4096^2 * 512 = 25.77 + 34.36 = 60.13 GFLOPs;
  12 blocks 721.6, plus the embedding 2 * 4096 * 261 * 512 = 1.09: 722.7 GFLOPs, 2% above the Perceiver
  (11 blocks would be 8% below). 8 heads of 64 channels; 38.5M parameters.
  """

  def __init__(
    self,
    num_classes: int,
    width: int = 512,
    num_layers: int = 12,
    num_heads: int = 8,
    widening_factor: int = 4,
    dropout_rate: float = 0.0,
    remat: bool = False,
    attention_chunk_size: int | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    check_positive(
      num_classes=num_classes,
      width=width,
      num_layers=num_layers,
      num_heads=num_heads,
      widening_factor=widening_factor,
    )
    _check_encoder(width, num_heads, dropout_rate, attention_chunk_size)
    self.num_classes = num_classes
    self.width = width
    self.num_layers = num_layers
    self.num_heads = num_heads
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate
    self.remat = remat
    self.attention_chunk_size = attention_chunk_size

  def __call__(self, tokens, *, is_training: bool):
    """tokens [B, M, C] -> logits [B, num_classes]."""
    if tokens.ndim != 3:
      raise ValueError(f"transformer takes tokens [B, M, C]; got shape {tokens.shape}.")
    x = hk.Linear(self.width, name="embedding")(tokens)  # [B, M, D]
    x = _encoder(x, self, is_training)
    return _head(jnp.mean(x, axis=1), self.num_classes)  # [B, num_classes]
