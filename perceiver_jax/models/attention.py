"""The pre-LayerNorm residual blocks: multi-head attention, the MLP, the cross- and self-attention blocks.

Axes: B batch, N queries (latents), M keys (inputs), H heads, D query-side channels, C key-side
channels, Q per-head q/k channels, V per-head value channels.

Speed (docs/performance.md) without changing the function computed or the parameters (Haiku's names,
shapes and initialisers are kept; the blocks read their `hk.Linear`/`hk.LayerNorm` parameters and apply
them themselves):
- LayerNorm is split into `normalize` (statistics in float32) and its affine part, which is folded into
  the weights of the projection that follows: LN(x) @ w + b == normalize(x) @ (scale * w) + (offset @ w + b).
  Inputs normalised once serve every cross-attend that reads them.
- q/k/v (self-attention) and k/v (cross-attention) are one matmul each.
- The key bias is not applied: it adds q . b_k to every logit of a row, which softmax ignores (its
  gradient is exactly zero either way).
- One key/value head shared by all query heads needs no head axis at all.
- Single-head cross-attention can fold the key and value projections into the queries: with
  k = x W_k and v = x W_v, q k^T = (q W_k^T) x^T and p v = (p x) W_v, so the [M, C] x [C, Q] projections
  of all M inputs become [N, Q] x [Q, C] products on the N latents (`fold_projections`).

The attention function and its per-backend kernels live in `attention_kernels.py`, LayerNorm and dense
layers in `dense.py`.

tests/reference_blocks.py writes the blocks plainly (`hk.Linear`, `hk.LayerNorm`, a few lines of attention)
with the same parameters: the tests hold every path above equal to them.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_jax.models.attention_kernels import ATTENTION_IMPLS, dot_product_attention, kernels_for
from perceiver_jax.models.dense import _dense, _DenseParams, _NormParams, fold_norm, layer_norm, normalize

# Importable from here as before the split (tests, baselines): the kernel switch and the layers.
__all__ = ["ATTENTION_IMPLS", "CrossAttentionBlock", "MLP", "MultiHeadAttention", "SelfAttentionBlock"]
__all__ += ["_DenseParams", "dot_product_attention", "kernels_for", "layer_norm", "normalize"]


def _check_heads(name: str, channels: int, heads: int) -> None:
  if heads <= 0 or channels <= 0:
    raise ValueError(f"{name}: heads={heads} and channels={channels} must be positive.")
  if channels % heads:
    raise ValueError(f"{name}: {heads} heads do not divide {channels} channels.")


def _split_heads(x, heads: int):
  return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def _projection(name: str, input_size: int, output_size: int, norm=None):
  """An `hk.Linear`'s (w, b) named `name`, with the LayerNorm (scale, offset) of its input folded in."""
  wb = _DenseParams(name=name)(input_size, output_size)
  return fold_norm(norm, *wb) if norm is not None else wb


class MultiHeadAttention(hk.Module):
  """Multi-head attention with the projections of `hk.Linear`s `query`, `key`, `value` and `output`.

  One method per use, all named like `__call__` (so they share one set of parameters, created in the
  order key, value, query, output):
  - `self_attention(x)`: q, k and v of the same tokens, projected in one matmul.
  - `keys_values(inputs)`: the keys and values the queries of `cross_attention` read; computed once for a
    weight-shared cross-attend that runs several times.
  - `cross_attention(queries, inputs)`: queries attend to other tokens, through their projected keys and
    values or, where `folds` says so, with the key and value projections folded into the queries.
  Inputs can come normalised with their LayerNorm's (scale, offset) still to apply (`norm`, `query_norm`,
  `input_norm`): it is folded into the projections.
  """

  def __init__(
    self,
    num_heads: int,
    qk_channels: int,
    v_channels: int,
    output_channels: int,
    attention_impl: str = "xla",
    chunk_size: int | None = None,
    fold_projections: bool | None = False,
    name: str | None = None,
  ):
    super().__init__(name=name)
    _check_heads(f"{name or 'attention'} q/k", qk_channels, num_heads)
    _check_heads(f"{name or 'attention'} v", v_channels, num_heads)
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={attention_impl!r} must be one of {ATTENTION_IMPLS}.")
    self.num_heads = num_heads
    self.qk_channels = qk_channels
    self.v_channels = v_channels
    self.output_channels = output_channels
    self.attention_impl = attention_impl
    self.chunk_size = chunk_size
    self.fold_projections = fold_projections

  def folds(self, num_queries: int, num_keys: int, key_channels: int) -> bool:
    """Whether keys/values are folded into the queries: as asked, or (None) when it saves FLOPs."""
    if self.fold_projections is not None:
      return self.fold_projections
    n, m, c, h = num_queries, num_keys, key_channels, self.num_heads
    qv = self.qk_channels + self.v_channels
    folded = 2 * h * n * m * c + n * c * qv  # attention in the inputs' C channels per head
    projected = n * m * qv + m * c * qv  # attention in Q/V channels, after projecting all M inputs
    return folded < projected

  @hk.name_like("__call__")
  def key_value_weights(self, channels: int, norm=None):
    """The key projection's w and the value projection's (w, b), for inputs of `channels`; the key bias
    shifts whole rows of logits, which softmax ignores: it is never applied."""
    wk, _ = _projection("key", channels, self.qk_channels, norm)
    wv, bv = _projection("value", channels, self.v_channels, norm)
    return wk, wv, bv

  @hk.name_like("__call__")
  def _attend(self, q, k, v, mask, *, chunk_size=None, return_weights=False, scale=None, project_values=None):
    """Per-head attention, then the output projection: -> [B, N, output_channels] (and the weights).

    `project_values` maps the attended values to [B, N, H, V] first (the folded cross-attention's value
    projection); without it the values are already projected.
    """
    w_out, b_out = _projection("output", self.v_channels, self.output_channels)
    impl = self.attention_impl
    result = dot_product_attention(
      q, k, v, mask, impl=impl, chunk_size=chunk_size, return_weights=return_weights, scale=scale
    )
    out, weights = result if return_weights else (result, None)  # [B, N, H, V], [B, H, N, M]
    if project_values is not None:
      out = project_values(out)
    out = _dense(out.reshape(*out.shape[:-2], self.v_channels), w_out, b_out)
    return (out, weights) if return_weights else out

  @hk.name_like("__call__")
  def self_attention(self, x, mask=None, *, norm=None):
    """x [B, N, D] (normalised, `norm` still to apply), mask bool [B, N] -> [B, N, output_channels]."""
    h, qk = self.num_heads, self.qk_channels
    wk, wv, bv = self.key_value_weights(x.shape[-1], norm)
    wq, bq = _projection("query", x.shape[-1], qk, norm)
    w = jnp.concatenate([wq, wk, wv], axis=1)
    qkv = _dense(x, w, jnp.concatenate([bq, jnp.zeros_like(bq), bv]))  # [B, N, 2 Q + V]
    q, k, v = (_split_heads(y, h) for y in jnp.split(qkv, [qk, 2 * qk], axis=-1))
    return self._attend(q, k, v, mask, chunk_size=self.chunk_size)

  @hk.name_like("__call__")
  def keys_values(self, inputs, *, input_norm=None):
    """inputs [B, M, C] -> keys [B, M, H, Q] and values [B, M, H, V], for `cross_attention(memory=...)`."""
    wk, wv, bv = self.key_value_weights(inputs.shape[-1], input_norm)
    kv = _dense(inputs, jnp.concatenate([wk, wv], axis=1), jnp.concatenate([jnp.zeros_like(bv), bv]))
    qk = self.qk_channels
    return _split_heads(kv[..., :qk], self.num_heads), _split_heads(kv[..., qk:], self.num_heads)

  @hk.name_like("__call__")
  def cross_attention(
    self, queries, inputs, mask=None, *, query_norm=None, input_norm=None, memory=None, return_weights=False
  ):
    """queries [B, N, D], inputs [B, M, C], mask bool [B, M] -> [B, N, output_channels].

    `memory`: `keys_values(inputs)`, computed earlier (ignored when the projections are folded). With
    `return_weights`, also the attention weights [B, H, N, M].
    """
    h, qk, vc = self.num_heads, self.qk_channels, self.v_channels
    c = inputs.shape[-1]
    query = lambda: _split_heads(_dense(queries, *_projection("query", queries.shape[-1], qk, query_norm)), h)
    if not self.folds(queries.shape[1], inputs.shape[1], c):
      keys, values = memory if memory is not None else self.keys_values(inputs, input_norm=input_norm)
      chunk = self.chunk_size
      return self._attend(query(), keys, values, mask, chunk_size=chunk, return_weights=return_weights)
    # Folded: queries in the inputs' C channels, one per head; the normalised inputs are keys and values,
    # and the value projection applies to the attended inputs.
    wk, wv, bv = self.key_value_weights(c, input_norm)
    q = query()  # [B, N, H, Q]
    q_in = jnp.einsum("bnhq,chq->bnhc", q, wk.reshape(c, h, qk // h))  # [B, N, H, C]
    x = inputs[:, :, None, :]  # [B, M, 1, C]
    return self._attend(
      q_in,
      x,
      x,
      mask,
      chunk_size=self.chunk_size,
      return_weights=return_weights,
      scale=(qk // h) ** -0.5,
      project_values=lambda out: (  # [B, N, H, C] -> [B, N, H, V]
        jnp.einsum("bnhc,chv->bnhv", out, wv.reshape(c, h, vc // h)) + bv.reshape(h, vc // h)
      ),
    )


class MLP(hk.Module):
  """Linear -> GELU -> Linear, widened by `widening_factor`."""

  def __init__(self, widening_factor: int, dropout_rate: float, name: str | None = None):
    super().__init__(name=name)
    if widening_factor <= 0:
      raise ValueError(f"widening_factor={widening_factor} must be positive.")
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate

  def __call__(self, x, *, is_training: bool, norm=None):
    """x [..., D] -> [..., D]; `norm`: the (scale, offset) of a LayerNorm x was normalised by."""
    channels = x.shape[-1]
    hidden = _DenseParams(name="hidden")(channels, channels * self.widening_factor)
    x = _dense(x, *(fold_norm(norm, *hidden) if norm is not None else hidden))
    x = jax.nn.gelu(x)
    x = _dense(x, *_DenseParams(name="output")(channels * self.widening_factor, channels))
    return _dropout(x, self.dropout_rate, is_training)


def _dropout(x, rate: float, is_training: bool):
  if is_training and rate > 0:
    return hk.dropout(hk.next_rng_key(), rate, x)
  return x


class CrossAttentionBlock(hk.Module):
  """Latents attend to the inputs (pre-LayerNorm on both), then an MLP; both residual.

  q/k/v widths default to the inputs' channels C (the paper's choice: the smaller side).
  `query_residual=False` drops the attention's residual (the output is the attention alone, then the MLP's
  residual): Perceiver IO's decoder of the learned-position ImageNet network.
  """

  def __init__(
    self,
    num_heads: int = 1,
    qk_channels: int | None = None,
    v_channels: int | None = None,
    widening_factor: int = 1,
    dropout_rate: float = 0.0,
    attention_impl: str = "xla",
    chunk_size: int | None = None,
    fold_projections: bool | None = None,
    query_residual: bool = True,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.num_heads = num_heads
    self.qk_channels = qk_channels
    self.v_channels = v_channels
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate
    self.attention_impl = attention_impl
    self.chunk_size = chunk_size
    self.fold_projections = fold_projections
    self.query_residual = query_residual

  @hk.name_like("__call__")
  def _attention(self, input_channels: int, output_channels: int | None) -> MultiHeadAttention:
    qk = self.qk_channels or input_channels
    v = self.v_channels or qk
    return MultiHeadAttention(
      self.num_heads,
      qk,
      v,
      output_channels or qk,
      self.attention_impl,
      self.chunk_size,
      self.fold_projections,
      name="attention",
    )

  @hk.name_like("__call__")
  def memory(self, inputs, *, num_queries: int, normalized: bool = False):
    """The keys and values that `num_queries` latents read from `inputs` [B, M, C], for `__call__(memory=)`;
    None where the projections are folded into the queries (there are none to keep).

    Computing them once lets weight-shared repeats of the block skip the [M, C] projections.
    """
    c = inputs.shape[-1]
    attention = self._attention(c, None)
    input_norm = _NormParams(name="input_norm")(c)
    if attention.folds(num_queries, inputs.shape[1], c):
      attention.key_value_weights(c, input_norm)  # Made here either way: the same parameter order.
      return None
    return attention.keys_values(inputs if normalized else normalize(inputs), input_norm=input_norm)

  def __call__(
    self,
    latents,
    inputs,
    *,
    input_mask=None,
    is_training: bool,
    return_weights: bool = False,
    normalized: bool = False,
    memory=None,
  ):
    """latents [B, N, D], inputs [B, M, C], input_mask bool [B, M] -> [B, N, D].

    `normalized`: inputs are already `normalize(inputs)` (shared by all cross-attends); `memory`: from
    `self.memory(inputs)`. With `return_weights`, also the attention weights [B, H, N, M].
    """
    c, d = inputs.shape[-1], latents.shape[-1]
    attention = self._attention(c, d)
    input_norm = _NormParams(name="input_norm")(c)
    inputs = inputs if normalized else normalize(inputs)
    query_norm = _NormParams(name="query_norm")(d)
    x = attention.cross_attention(
      normalize(latents),
      inputs,
      input_mask,
      query_norm=query_norm,
      input_norm=input_norm,
      memory=memory,
      return_weights=return_weights,
    )
    x, weights = x if return_weights else (x, None)
    x = _dropout(x, self.dropout_rate, is_training)
    latents = latents + x if self.query_residual else x
    mlp_norm = _NormParams(name="mlp_norm")(d)
    mlp = MLP(self.widening_factor, self.dropout_rate, name="mlp")
    latents = latents + mlp(normalize(latents), is_training=is_training, norm=mlp_norm)
    return (latents, weights) if return_weights else latents


class SelfAttentionBlock(hk.Module):
  """Pre-LayerNorm multi-head self-attention, then an MLP; both residual. q/k/v at full width."""

  def __init__(
    self,
    num_heads: int = 8,
    widening_factor: int = 1,
    dropout_rate: float = 0.0,
    attention_impl: str = "xla",
    chunk_size: int | None = None,
    name: str | None = None,
  ):
    """`chunk_size`: attend to the keys in chunks of this many (exact online softmax, 'xla' only), so the
    attention's memory is O(N x chunk) rather than O(N^2)."""
    super().__init__(name=name)
    self.num_heads = num_heads
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate
    self.attention_impl = attention_impl
    self.chunk_size = chunk_size

  def __call__(self, x, *, mask=None, is_training: bool):
    """x [B, N, D], mask bool [B, N] -> [B, N, D]."""
    d = x.shape[-1]
    attention = MultiHeadAttention(
      self.num_heads, d, d, d, self.attention_impl, self.chunk_size, name="attention"
    )
    norm = _NormParams(name="norm")(d)
    x = x + _dropout(attention.self_attention(normalize(x), mask, norm=norm), self.dropout_rate, is_training)
    mlp_norm = _NormParams(name="mlp_norm")(d)
    mlp = MLP(self.widening_factor, self.dropout_rate, name="mlp")
    return x + mlp(normalize(x), is_training=is_training, norm=mlp_norm)
