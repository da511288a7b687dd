"""Attention and the pre-LayerNorm residual blocks built on it.

Axes: B batch, N queries (latents), M keys (inputs), H heads, D query-side channels, C key-side
channels, Q per-head q/k channels, V per-head value channels.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp


def dot_product_attention(q, k, v, mask=None, *, return_weights: bool = False):
  """Scaled dot-product attention, the one attention function of the codebase.

  Args:
    q: [B, N, H, Q]; k: [B, M, H, Q]; v: [B, M, H, V].
    mask: optional bool [B, M]; False keys get no weight.
    return_weights: also return the attention weights [B, H, N, M].

  Returns:
    [B, N, H, V], and the weights if asked.
  """
  logits = jnp.einsum("bnhq,bmhq->bhnm", q, k) * (q.shape[-1] ** -0.5)
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhnm,bmhv->bnhv", weights, v)
  return (out, weights) if return_weights else out


def _check_heads(name: str, channels: int, heads: int) -> None:
  if heads <= 0 or channels <= 0:
    raise ValueError(f"{name}: heads={heads} and channels={channels} must be positive.")
  if channels % heads:
    raise ValueError(f"{name}: {heads} heads do not divide {channels} channels.")


def layer_norm(x, name: str):
  return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)(x)


class MultiHeadAttention(hk.Module):
  """Projects queries, keys and values, attends per head, and projects back to `output_channels`."""

  def __init__(
    self,
    num_heads: int,
    qk_channels: int,
    v_channels: int,
    output_channels: int,
    name: str | None = None,
  ):
    super().__init__(name=name)
    _check_heads(f"{name or 'attention'} q/k", qk_channels, num_heads)
    _check_heads(f"{name or 'attention'} v", v_channels, num_heads)
    self.num_heads = num_heads
    self.qk_channels = qk_channels
    self.v_channels = v_channels
    self.output_channels = output_channels

  def __call__(self, queries, keys_values, mask=None, *, return_weights: bool = False):
    """queries [B, N, D], keys_values [B, M, C], mask bool [B, M] -> [B, N, output_channels].

    With `return_weights`, also the attention weights [B, H, N, M].
    """
    h = self.num_heads
    q = hk.Linear(self.qk_channels, name="query")(queries)  # [B, N, H*Q]
    k = hk.Linear(self.qk_channels, name="key")(keys_values)  # [B, M, H*Q]
    v = hk.Linear(self.v_channels, name="value")(keys_values)  # [B, M, H*V]
    split = lambda x: x.reshape(*x.shape[:-1], h, x.shape[-1] // h)
    out = dot_product_attention(split(q), split(k), split(v), mask, return_weights=return_weights)
    out, weights = out if return_weights else (out, None)  # [B, N, H, V], [B, H, N, M]
    out = hk.Linear(self.output_channels, name="output")(out.reshape(*out.shape[:-2], self.v_channels))
    return (out, weights) if return_weights else out


class MLP(hk.Module):
  """Linear -> GELU -> Linear, widened by `widening_factor`."""

  def __init__(self, widening_factor: int, dropout_rate: float, name: str | None = None):
    super().__init__(name=name)
    if widening_factor <= 0:
      raise ValueError(f"widening_factor={widening_factor} must be positive.")
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate

  def __call__(self, x, *, is_training: bool):
    channels = x.shape[-1]
    x = hk.Linear(channels * self.widening_factor, name="hidden")(x)
    x = jax.nn.gelu(x)
    x = hk.Linear(channels, name="output")(x)
    return _dropout(x, self.dropout_rate, is_training)


def _dropout(x, rate: float, is_training: bool):
  if is_training and rate > 0:
    return hk.dropout(hk.next_rng_key(), rate, x)
  return x


class CrossAttentionBlock(hk.Module):
  """Latents attend to the inputs (pre-LayerNorm on both), then an MLP; both residual.

  q/k/v widths default to the inputs' channels C (the paper's choice: the smaller side).
  """

  def __init__(
    self,
    num_heads: int = 1,
    qk_channels: int | None = None,
    v_channels: int | None = None,
    widening_factor: int = 1,
    dropout_rate: float = 0.0,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.num_heads = num_heads
    self.qk_channels = qk_channels
    self.v_channels = v_channels
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate

  def __call__(self, latents, inputs, *, input_mask=None, is_training: bool, return_weights: bool = False):
    """latents [B, N, D], inputs [B, M, C], input_mask bool [B, M] -> [B, N, D].

    With `return_weights`, also the attention weights [B, H, N, M].
    """
    qk = self.qk_channels or inputs.shape[-1]
    v = self.v_channels or qk
    attend = MultiHeadAttention(self.num_heads, qk, v, latents.shape[-1], name="attention")
    x, weights = attend(
      layer_norm(latents, "query_norm"), layer_norm(inputs, "input_norm"), input_mask, return_weights=True
    )
    latents = latents + _dropout(x, self.dropout_rate, is_training)
    mlp = MLP(self.widening_factor, self.dropout_rate, name="mlp")
    latents = latents + mlp(layer_norm(latents, "mlp_norm"), is_training=is_training)
    return (latents, weights) if return_weights else latents


class SelfAttentionBlock(hk.Module):
  """Pre-LayerNorm multi-head self-attention, then an MLP; both residual. q/k/v at full width."""

  def __init__(
    self,
    num_heads: int = 8,
    widening_factor: int = 1,
    dropout_rate: float = 0.0,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.num_heads = num_heads
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate

  def __call__(self, x, *, mask=None, is_training: bool):
    """x [B, N, D], mask bool [B, N] -> [B, N, D]."""
    d = x.shape[-1]
    attend = MultiHeadAttention(self.num_heads, d, d, d, name="attention")
    y = layer_norm(x, "norm")
    x = x + _dropout(attend(y, y, mask), self.dropout_rate, is_training)
    mlp = MLP(self.widening_factor, self.dropout_rate, name="mlp")
    return x + mlp(layer_norm(x, "mlp_norm"), is_training=is_training)
