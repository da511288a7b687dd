"""The blocks of perceiver_jax.models.attention written plainly (`hk.Linear`, `hk.LayerNorm`, a few lines of
attention) with the same parameters: what every fast path is tested against (tests/test_reference_blocks.py).
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_jax.models.attention import _split_heads


class _ReferenceAttention(hk.Module):
  def __init__(self, num_heads: int, qk_channels: int, v_channels: int, output_channels: int, name: str):
    super().__init__(name=name)
    self.h, self.qk, self.v, self.out = num_heads, qk_channels, v_channels, output_channels

  def __call__(self, x, y, mask=None):
    """x [B, N, D] attends to y [B, M, C] (mask bool [B, M]) -> [B, N, output_channels]."""
    q = _split_heads(hk.Linear(self.qk, name="query")(x), self.h)  # [B, N, H, Q]
    k = _split_heads(hk.Linear(self.qk, name="key")(y), self.h)  # [B, M, H, Q]
    v = _split_heads(hk.Linear(self.v, name="value")(y), self.h)  # [B, M, H, V]
    logits = jnp.einsum("bnhq,bmhq->bhnm", q, k) * (self.qk // self.h) ** -0.5
    if mask is not None:
      logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    out = jnp.einsum("bhnm,bmhv->bnhv", jax.nn.softmax(logits, axis=-1), v)
    return hk.Linear(self.out, name="output")(out.reshape(*out.shape[:2], self.v))


class _ReferenceMLP(hk.Module):
  def __call__(self, x, widening_factor: int):
    hidden = jax.nn.gelu(hk.Linear(x.shape[-1] * widening_factor, name="hidden")(x))
    return hk.Linear(x.shape[-1], name="output")(hidden)


def _reference_mlp(x, widening_factor: int):
  return _ReferenceMLP(name="mlp")(x, widening_factor)


def _reference_norm(x, name: str):
  return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)(x)


class ReferenceCrossAttentionBlock(hk.Module):
  """`CrossAttentionBlock` (no dropout) in plain Haiku, with its parameter names."""

  def __init__(self, num_heads=1, qk_channels=None, v_channels=None, widening_factor=1, name=None):
    super().__init__(name=name)
    self.num_heads, self.qk_channels, self.v_channels = num_heads, qk_channels, v_channels
    self.widening_factor = widening_factor

  def __call__(self, latents, inputs, *, input_mask=None):
    qk = self.qk_channels or inputs.shape[-1]
    attention = _ReferenceAttention(self.num_heads, qk, self.v_channels or qk, latents.shape[-1], "attention")
    x = _reference_norm(latents, "query_norm")
    latents = latents + attention(x, _reference_norm(inputs, "input_norm"), input_mask)
    return latents + _reference_mlp(_reference_norm(latents, "mlp_norm"), self.widening_factor)


class ReferenceSelfAttentionBlock(hk.Module):
  """`SelfAttentionBlock` (no dropout) in plain Haiku, with its parameter names."""

  def __init__(self, num_heads=8, widening_factor=1, name=None):
    super().__init__(name=name)
    self.num_heads, self.widening_factor = num_heads, widening_factor

  def __call__(self, x, *, mask=None):
    d = x.shape[-1]
    y = _reference_norm(x, "norm")
    x = x + _ReferenceAttention(self.num_heads, d, d, d, "attention")(y, y, mask)
    return x + _reference_mlp(_reference_norm(x, "mlp_norm"), self.widening_factor)
