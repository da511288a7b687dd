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
"""

from __future__ import annotations

import haiku as hk
import jax.numpy as jnp

from perceiver_jax.attention import CrossAttentionBlock, SelfAttentionBlock

LAYOUTS = ("interleaved", "start")


def _positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive integer.")


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
    name: str | None = None,
  ):
    """See the module docstring; `cross_qk_channels=None` uses the input's channels (the paper's)."""
    super().__init__(name=name)
    _positive(
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
      _positive(cross_qk_channels=cross_qk_channels)
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

  def _cross_attend(self, name: str) -> CrossAttentionBlock:
    return CrossAttentionBlock(
      num_heads=self.num_cross_heads,
      qk_channels=self.cross_qk_channels,
      widening_factor=self.widening_factor,
      dropout_rate=self.dropout_rate,
      name=name,
    )

  def _latent_transformer(self, name: str) -> list[SelfAttentionBlock]:
    return [
      SelfAttentionBlock(
        num_heads=self.num_self_heads,
        widening_factor=self.widening_factor,
        dropout_rate=self.dropout_rate,
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

    attention_weights = []

    def cross(i, x):
      x, weights = cross_attends[i](
        x, tokens, input_mask=input_mask, is_training=is_training, return_weights=True
      )
      if return_attention:
        attention_weights.append(weights)
      return x

    def transform(i, x):
      for block in transformers[i]:
        x = block(x, is_training=is_training)
      return x

    if self.cross_attend_layout == "interleaved":
      every = r // k
      for i in range(r):
        if i % every == 0:
          latents = cross(i // every, latents)
        latents = transform(i, latents)
    else:
      for i in range(k):
        latents = cross(i, latents)
      for i in range(r):
        latents = transform(i, latents)

    pooled = jnp.mean(latents, axis=1)  # [B, D]
    # Zero-initialised as in the official code: a random head at a high learning rate can blow up.
    logits = hk.Linear(self.num_classes, w_init=hk.initializers.Constant(0.0), name="classifier")(pooled)
    return (logits, attention_weights) if return_attention else logits
