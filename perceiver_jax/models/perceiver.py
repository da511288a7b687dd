"""The Perceiver (Jaegle et al., ICML 2021): a latent array that reads its inputs by cross-attention.

Axes: B batch, M input tokens, C input channels, N latents, D latent channels, K cross-attends,
R latent Transformers (repeats), L self-attention blocks per latent Transformer.

The latent Transformer runs R times (8 in the paper, 48 self-attention blocks in all) whatever K is;
the K cross-attends are interleaved evenly before every (R / K)-th of them, or all put at the start
(`cross_attend_layout="start"`). This keeps the paper's ablation FLOPs: K = 1, 2, 4, 8 give 404.3,
447.6, 534.1 and 707.2 GFLOPs at 224x224.

Weight sharing as in the paper: the first cross-attend has its own weights, cross-attends 2..K share
one set, and all K latent Transformers share one set. `share_cross_attends=False` and
`share_latent_transformers=False` give every repeat its own weights.

Speed and memory switches (docs/performance.md); none changes the function or the parameters:
- `attention_impl`: 'xla' (fused softmax with its own backward), 'jax' (`jax.nn.dot_product_attention`:
  cuDNN where it can) or 'cudnn' (forced).
- `cross_attention_chunk_size`: cross-attention over the M inputs in chunks of this many (exact online
  softmax), so its memory is O(N x chunk) rather than O(N x M); None: unchunked.
- `fold_cross_projections`: fold the cross-attends' key/value projections into the queries (see
  attention.py); None: where it saves FLOPs (one head). Otherwise the keys and values of the shared
  cross-attends are computed once. Inputs are normalised once for all cross-attends either way.
- `scan_repeats`: weight-shared repeats run under `hk.scan`, compiled once rather than unrolled.
- `remat`: every block is rematerialised in the backward pass (`hk.remat`): with `scan_repeats`, memory
  no longer grows with depth beyond the [B, N, D] latents between blocks.
"""

from __future__ import annotations

import haiku as hk
import jax.numpy as jnp

from perceiver_jax.models.attention import ATTENTION_IMPLS, CrossAttentionBlock, SelfAttentionBlock, normalize
from perceiver_jax.models.checks import check_positive

LAYOUTS = ("interleaved", "start")


class Perceiver(hk.Module):
  """Tokens [B, M, C] -> logits [B, num_classes]."""

  def __init__(
    self,
    num_classes: int,
    num_latents: int = 512,
    latent_channels: int = 1024,
    num_cross_attends: int = 8,
    num_latent_transformers: int = 8,
    num_self_attends_per_block: int = 6,
    num_cross_heads: int = 1,
    num_self_heads: int = 8,
    cross_qk_channels: int | None = None,
    widening_factor: int = 1,
    dropout_rate: float = 0.0,
    share_cross_attends: bool = True,
    share_latent_transformers: bool = True,
    cross_attend_layout: str = "interleaved",
    attention_impl: str = "xla",
    cross_attention_chunk_size: int | None = None,
    fold_cross_projections: bool | None = None,
    scan_repeats: bool = True,
    remat: bool = False,
    name: str | None = None,
  ):
    """See the module docstring; `cross_qk_channels=None` uses the input's channels (the paper's)."""
    super().__init__(name=name)
    check_positive(
      num_classes=num_classes,
      num_latents=num_latents,
      latent_channels=latent_channels,
      num_cross_attends=num_cross_attends,
      num_latent_transformers=num_latent_transformers,
      num_cross_heads=num_cross_heads,
      num_self_heads=num_self_heads,
      widening_factor=widening_factor,
    )
    if num_self_attends_per_block < 0:
      raise ValueError(f"num_self_attends_per_block={num_self_attends_per_block} must be >= 0.")
    if latent_channels % num_self_heads:
      raise ValueError(f"num_self_heads={num_self_heads} does not divide latent_channels={latent_channels}.")
    if cross_qk_channels is not None:
      check_positive(cross_qk_channels=cross_qk_channels)
      if cross_qk_channels % num_cross_heads:
        raise ValueError(
          f"num_cross_heads={num_cross_heads} does not divide cross_qk_channels={cross_qk_channels}."
        )
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1).")
    if cross_attend_layout not in LAYOUTS:
      raise ValueError(f"cross_attend_layout={cross_attend_layout!r} must be one of {LAYOUTS}.")
    if cross_attend_layout == "interleaved" and num_latent_transformers % num_cross_attends:
      raise ValueError(
        f"num_cross_attends={num_cross_attends} must divide num_latent_transformers="
        f"{num_latent_transformers} to interleave them evenly (or use cross_attend_layout='start')."
      )
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={attention_impl!r} must be one of {ATTENTION_IMPLS}.")
    if cross_attention_chunk_size is not None:
      check_positive(cross_attention_chunk_size=cross_attention_chunk_size)
      if attention_impl != "xla":
        raise ValueError(
          f"cross_attention_chunk_size={cross_attention_chunk_size} needs attention_impl='xla', "
          f"not {attention_impl!r}."
        )
    self.num_classes = num_classes
    self.num_latents = num_latents
    self.latent_channels = latent_channels
    self.num_cross_attends = num_cross_attends
    self.num_latent_transformers = num_latent_transformers
    self.num_self_attends_per_block = num_self_attends_per_block
    self.num_cross_heads = num_cross_heads
    self.num_self_heads = num_self_heads
    self.cross_qk_channels = cross_qk_channels
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate
    self.share_cross_attends = share_cross_attends
    self.share_latent_transformers = share_latent_transformers
    self.cross_attend_layout = cross_attend_layout
    self.attention_impl = attention_impl
    self.cross_attention_chunk_size = cross_attention_chunk_size
    self.fold_cross_projections = fold_cross_projections
    self.scan_repeats = scan_repeats
    self.remat = remat

  def _cross_attend(self, name: str) -> CrossAttentionBlock:
    return CrossAttentionBlock(
      num_heads=self.num_cross_heads,
      qk_channels=self.cross_qk_channels,
      widening_factor=self.widening_factor,
      dropout_rate=self.dropout_rate,
      attention_impl=self.attention_impl,
      chunk_size=self.cross_attention_chunk_size,
      fold_projections=self.fold_cross_projections,
      name=name,
    )

  def _latent_transformer(self, name: str) -> list[SelfAttentionBlock]:
    return [
      SelfAttentionBlock(
        num_heads=self.num_self_heads,
        widening_factor=self.widening_factor,
        dropout_rate=self.dropout_rate,
        attention_impl=self.attention_impl,
        name=f"{name}_block_{j}",
      )
      for j in range(self.num_self_attends_per_block)
    ]

  def __call__(self, tokens, *, input_mask=None, is_training: bool, return_attention: bool = False):
    """tokens [B, M, C], input_mask bool [B, M] (True = real token) -> logits [B, num_classes].

    With `return_attention`, returns (logits, weights): weights[i] are the i-th cross-attend's attention
    weights [B, heads, N, M] over the tokens in the order given. When not asked, nothing extra is kept.
    """
    if tokens.ndim != 3:
      raise ValueError(f"Perceiver takes tokens [B, M, C]; got shape {tokens.shape}.")
    k, r = self.num_cross_attends, self.num_latent_transformers
    # Module instances are the unit of weight sharing in Haiku: calling one twice reuses its weights.
    if self.share_cross_attends:
      shared = self._cross_attend("cross_attend_shared") if k > 1 else None
      cross_attends = [self._cross_attend("cross_attend_0")] + [shared] * (k - 1)
    else:
      cross_attends = [self._cross_attend(f"cross_attend_{i}") for i in range(k)]
    if self.share_latent_transformers:
      transformers = [self._latent_transformer("latent_transformer")] * r
    else:
      transformers = [self._latent_transformer(f"latent_transformer_{i}") for i in range(r)]

    init = hk.initializers.TruncatedNormal(stddev=0.02)
    latents = hk.get_parameter("latents", [self.num_latents, self.latent_channels], init=init)
    latents = jnp.broadcast_to(latents.astype(tokens.dtype), (tokens.shape[0], *latents.shape))  # [B, N, D]

    # Every cross-attend normalises the same tokens: once here. The blocks fold their LayerNorm's scale
    # and offset into their projections.
    tokens = normalize(tokens)  # [B, M, C]
    # Keys and values of a weight-shared cross-attend are the same every time it runs: computed once.
    memories = {}
    for block in cross_attends:
      if cross_attends.count(block) > 1 and id(block) not in memories:
        memories[id(block)] = block.memory(tokens, num_queries=self.num_latents, normalized=True)

    def checkpointed(fn):
      return hk.remat(fn) if self.remat else fn

    def cross(block):
      def apply(x):  # [B, N, D] -> ([B, N, D], weights [B, H, N, M] or None)
        out = block(
          x,
          tokens,
          input_mask=input_mask,
          is_training=is_training,
          return_weights=return_attention,
          normalized=True,
          memory=memories.get(id(block)),
        )
        return out if return_attention else (out, None)

      return checkpointed(apply)

    def transform(blocks):
      def apply(x):
        for block in blocks:
          x = checkpointed(lambda y, block=block: block(y, is_training=is_training))(x)
        return x, None

      return apply

    # Weight-shared repeats are one module called again and again: a scan compiles it once.
    scan = self.scan_repeats and self.share_cross_attends and self.share_latent_transformers

    def repeat(fn, x, times: int):
      """Applies fn: x -> (x, out) `times` times (the same weights each time); returns x, [out] * times."""
      if scan and times > 1:
        x, outs = hk.scan(lambda carry, _: fn(carry), x, None, length=times)
        return x, [None] * times if outs is None else list(outs)
      outs = []
      for _ in range(times):
        x, out = fn(x)
        outs.append(out)
      return x, outs

    def transformers_from(first: int, count: int, x):
      if self.share_latent_transformers:
        return repeat(transform(transformers[first]), x, count)[0]
      for i in range(first, first + count):
        x, _ = transform(transformers[i])(x)
      return x

    weights = []
    if self.cross_attend_layout == "interleaved":
      every = r // k

      def segment(i):  # Cross-attend i, then latent Transformers i * every .. (i + 1) * every - 1.
        def apply(x):
          x, out = cross(cross_attends[i])(x)
          return transformers_from(i * every, every, x), out

        return apply

      latents, out = segment(0)(latents)
      weights.append(out)
      if scan:
        latents, outs = repeat(segment(1), latents, k - 1)
        weights += outs
      else:
        for i in range(1, k):
          latents, out = segment(i)(latents)
          weights.append(out)
    else:
      for i in range(k if not scan else min(k, 1)):
        latents, out = cross(cross_attends[i])(latents)
        weights.append(out)
      if scan:
        latents, outs = repeat(cross(cross_attends[-1]), latents, k - 1)
        weights += outs
      latents = transformers_from(0, r, latents)

    # The mean over N in float32 whatever the compute dtype.
    pooled = jnp.mean(latents.astype(jnp.float32), axis=1).astype(latents.dtype)  # [B, D]
    # Zero-initialised as in the official code: a random head at a high learning rate can blow up.
    logits = hk.Linear(self.num_classes, w_init=hk.initializers.Constant(0.0), name="classifier")(pooled)
    return (logits, weights) if return_attention else logits
