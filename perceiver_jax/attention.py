"""Attention and the pre-LayerNorm residual blocks built on it.

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
- Softmax is fused with its matmuls and has its own backward (one pass over the [N, M] weights each way).
- Single-head cross-attention can fold the key and value projections into the queries: with
  k = x W_k and v = x W_v, q k^T = (q W_k^T) x^T and p v = (p x) W_v, so the [M, C] x [C, Q] projections
  of all M inputs become [N, Q] x [Q, C] products on the N latents (`fold_projections`).
"""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ATTENTION_IMPLS = ("xla", "jax", "cudnn")
LAYER_NORM_EPS = 1e-5  # hk.LayerNorm's default.


# ----------------------------------------------------------------------------------------------------
# The attention function.


def dot_product_attention(
  q,
  k,
  v,
  mask=None,
  *,
  scale: float | None = None,
  impl: str = "xla",
  chunk_size: int | None = None,
  return_weights: bool = False,
):
  """Scaled dot-product attention, the one attention function of the codebase.

  Args:
    q: [B, N, H, Q]; k: [B, M, G, Q]; v: [B, M, G, V] with G = H, or G = 1 (one key/value head read by
      every query head).
    mask: optional bool [B, M]; False keys get no weight.
    scale: multiplies the logits; default Q ** -0.5.
    impl: 'xla': softmax fused with its matmuls and its own backward, any head size; 'jax':
      `jax.nn.dot_product_attention`, which uses cuDNN's fused kernel where it can and XLA elsewhere;
      'cudnn': that kernel or an error (GPU, float16/bfloat16, head sizes it supports).
    chunk_size: ('xla' only) attend to the keys in chunks of this many: exact (online softmax), with
      O(N x chunk) memory instead of O(N x M), in the backward pass too.
    return_weights: also return the attention weights [B, H, N, M] (the output is computed as without).

  Returns:
    [B, N, H, V] in v's dtype, and the weights if asked.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} must be one of {ATTENTION_IMPLS}.")
  if chunk_size is not None and impl != "xla":
    raise ValueError(f"cross_attention_chunk_size={chunk_size} needs attention_impl='xla', not {impl!r}.")
  if k.shape[2] not in (1, q.shape[2]) or v.shape[2] != k.shape[2]:
    raise ValueError(f"Key/value heads {k.shape[2]}, {v.shape[2]} must be 1 or the {q.shape[2]} query heads.")
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  # Heads-major layouts for the batched matmuls: [B, H, N, Q]; one shared key head drops its axis.
  qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)
  heads_axis = lambda x: x[:, :, 0] if x.shape[2] == 1 else jnp.swapaxes(x, 1, 2)
  kh, vh = heads_axis(k), heads_axis(v)
  weights = None
  if impl != "xla":
    mask4 = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, M]
    out = jax.nn.dot_product_attention(
      q, k, v, mask=mask4, scale=scale, implementation=None if impl == "jax" else "cudnn"
    ).astype(v.dtype)
  elif chunk_size is not None and chunk_size < k.shape[1]:
    out = jnp.swapaxes(_chunked_attention(qh, kh, vh, mask, chunk_size), 1, 2)
  else:
    out, weights = _fused_attention(qh, kh, vh, mask)
    out = jnp.swapaxes(out, 1, 2)  # [B, N, H, V]
  if not return_weights:
    return out
  if weights is None:  # Only the fused path has them at hand: the others' are computed again.
    weights = jax.nn.softmax(_masked(_logits(qh, kh), mask), axis=-1)
  return out, weights


def _logits(q, k):
  """q [B, H, N, Q] . k [B, H, M, Q] or [B, M, Q] -> float32 [B, H, N, M]."""
  spec = "bhnq,bhmq->bhnm" if k.ndim == 4 else "bhnq,bmq->bhnm"
  return jnp.einsum(spec, q, k, preferred_element_type=jnp.float32)


def _weighted_sum(p, v):
  """p [B, H, N, M] . v [B, H, M, V] or [B, M, V] -> float32 [B, H, N, V]."""
  spec = "bhnm,bhmv->bhnv" if v.ndim == 4 else "bhnm,bmv->bhnv"
  return jnp.einsum(spec, p, v, preferred_element_type=jnp.float32)


def _key_grad(ds, x, like):
  """ds [B, H, N, M] . x [B, H, N, Q] -> the keys' (or values') gradient, shaped like `like`."""
  spec = "bhnm,bhnq->bhmq" if like.ndim == 4 else "bhnm,bhnq->bmq"
  return jnp.einsum(spec, ds, x, preferred_element_type=jnp.float32).astype(like.dtype)


def _masked(s, mask):
  if mask is None:
    return s
  # The most negative finite value, not -inf: a row with every key masked stays finite (uniform).
  return jnp.where(mask[:, None, None, :], s, jnp.finfo(s.dtype).min)


@jax.custom_vjp
def _fused_attention(q, k, v, mask):
  """(softmax(q k^T) v, softmax(q k^T)), normalised after the weighted sum (on [N, V], not [N, M]).

  The weights [B, H, N, M] cost nothing unless used: unused outputs are dropped by XLA.
  """
  return _fused_attention_fwd(q, k, v, mask)[0]


def _fused_attention_fwd(q, k, v, mask):
  s = _masked(_logits(q, k), mask)  # [B, H, N, M]
  e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)).astype(v.dtype)
  inv_sum = 1.0 / jnp.sum(e, axis=-1, keepdims=True, dtype=jnp.float32)  # [B, H, N, 1]
  out = (_weighted_sum(e, v) * inv_sum).astype(v.dtype)  # [B, H, N, V]
  return (out, e * inv_sum), (q, k, v, mask, e, inv_sum, out)


def _fused_attention_bwd(residuals, cotangents):
  q, k, v, mask, e, inv_sum, out = residuals
  d_out, d_weights = cotangents
  # With p = e * inv_sum: dS = p * (dP - delta), delta = rowsum(p * dP) = rowsum(d_out * out), a sum over
  # V rather than over M. A cotangent of the weights themselves adds p * (dW - rowsum(p * dW)); it is
  # zero in training, and XLA drops the terms.
  d_out = d_out.astype(jnp.float32)
  delta = jnp.sum(d_out * out, axis=-1, keepdims=True)  # [B, H, N, 1]
  dp = _logits(d_out.astype(v.dtype), v) + d_weights  # [B, H, N, M]
  delta = delta + jnp.sum(d_weights * e * inv_sum, axis=-1, keepdims=True)
  ds = (e * ((dp - delta) * inv_sum)).astype(q.dtype)
  dq = jnp.einsum("bhnm,bhmq->bhnq" if k.ndim == 4 else "bhnm,bmq->bhnq", ds, k).astype(q.dtype)
  dk = _key_grad(ds, q, k)
  dv = _key_grad(e, (d_out * inv_sum).astype(v.dtype), v)
  return dq, dk, dv, None


_fused_attention.defvjp(_fused_attention_fwd, _fused_attention_bwd)


def _chunks(x, chunk: int, axis: int):
  """Splits `axis` (padded to a multiple of `chunk`) into a leading axis of chunks."""
  size = x.shape[axis]
  pad = -size % chunk
  if pad:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    x = jnp.pad(x, widths)
  x = x.reshape(*x.shape[:axis], -1, chunk, *x.shape[axis + 1 :])
  return jnp.moveaxis(x, axis, 0)


def _unchunk(x, axis: int, size: int):
  x = jnp.moveaxis(x, 0, axis)
  x = x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2 :])
  return lax.slice_in_dim(x, 0, size, axis=axis)


def _chunk_inputs(k, v, mask, chunk):
  m = k.shape[-2]
  mask = jnp.ones((k.shape[0], m), bool) if mask is None else mask
  # Padded keys are masked out; the keys' axis is -2 in both layouts.
  return _chunks(k, chunk, k.ndim - 2), _chunks(v, chunk, v.ndim - 2), _chunks(mask, chunk, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_attention(q, k, v, mask, chunk):
  return _chunked_attention_fwd(q, k, v, mask, chunk)[0]


def _chunked_attention_fwd(q, k, v, mask, chunk):
  """Online softmax over key chunks: running max, running sum and running weighted sum, rescaled."""
  ks, vs, masks = _chunk_inputs(k, v, mask, chunk)
  b, h, n = q.shape[:3]
  init = (
    jnp.full((b, h, n, 1), jnp.finfo(jnp.float32).min),  # running max
    jnp.zeros((b, h, n, 1), jnp.float32),  # running sum of exp
    jnp.zeros((b, h, n, v.shape[-1]), jnp.float32),  # running weighted sum
  )

  def step(carry, chunk_inputs):
    m, total, acc = carry
    k_c, v_c, mask_c = chunk_inputs
    s = _masked(_logits(q, k_c), mask_c)  # [B, H, N, chunk]
    m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
    e = jnp.exp(s - m_new)
    rescale = jnp.exp(m - m_new)
    total = total * rescale + jnp.sum(e, axis=-1, keepdims=True)
    acc = acc * rescale + _weighted_sum(e.astype(v.dtype), v_c)
    return (m_new, total, acc), None

  (m, total, acc), _ = lax.scan(step, init, (ks, vs, masks))
  out = (acc / total).astype(v.dtype)
  log_sum = m + jnp.log(total)  # [B, H, N, 1]
  return out, (q, k, v, mask, out, log_sum)


def _chunked_attention_bwd(chunk, residuals, d_out):
  q, k, v, mask, out, log_sum = residuals
  ks, vs, masks = _chunk_inputs(k, v, mask, chunk)
  d_out = d_out.astype(jnp.float32)
  delta = jnp.sum(d_out * out, axis=-1, keepdims=True)  # [B, H, N, 1]
  d_out = d_out.astype(v.dtype)

  def step(dq, chunk_inputs):
    k_c, v_c, mask_c = chunk_inputs
    p = jnp.exp(_masked(_logits(q, k_c), mask_c) - log_sum)  # [B, H, N, chunk]
    ds = (p * (_logits(d_out, v_c) - delta)).astype(q.dtype)
    dq = dq + jnp.einsum("bhnm,bhmq->bhnq" if k_c.ndim == 4 else "bhnm,bmq->bhnq", ds, k_c)
    return dq, (_key_grad(ds, q, k_c), _key_grad(p.astype(v.dtype), d_out, v_c))

  dq, (dks, dvs) = lax.scan(step, jnp.zeros(q.shape, jnp.float32), (ks, vs, masks))
  m = k.shape[-2]
  dk = _unchunk(dks, k.ndim - 2, m)
  dv = _unchunk(dvs, v.ndim - 2, m)
  return dq.astype(q.dtype), dk, dv, None


_chunked_attention.defvjp(_chunked_attention_fwd, _chunked_attention_bwd)


# ----------------------------------------------------------------------------------------------------
# LayerNorm and dense layers, applied by the blocks with Haiku's parameter names.


def normalize(x, eps: float = LAYER_NORM_EPS):
  """LayerNorm without its affine part over the last axis; statistics in float32, result in x's dtype."""
  xf = x.astype(jnp.float32)
  centered = xf - jnp.mean(xf, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
  return (centered * lax.rsqrt(variance + eps)).astype(x.dtype)


class _NormParams(hk.Module):
  """The parameters of an `hk.LayerNorm` over the last axis: (scale [C], offset [C])."""

  def __call__(self, channels: int):
    scale = hk.get_parameter("scale", [channels], init=jnp.ones)
    offset = hk.get_parameter("offset", [channels], init=jnp.zeros)
    return scale, offset


class _DenseParams(hk.Module):
  """The parameters of an `hk.Linear` (names, shapes, initialiser): (w [in, out], b [out])."""

  def __call__(self, input_size: int, output_size: int):
    w_init = hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(input_size))
    w = hk.get_parameter("w", [input_size, output_size], init=w_init)
    b = hk.get_parameter("b", [output_size], init=jnp.zeros)
    return w, b


def layer_norm(x, name: str):
  """`hk.LayerNorm` over the last axis (its parameter names), statistics in float32."""
  scale, offset = _NormParams(name=name)(x.shape[-1])
  return normalize(x) * scale.astype(x.dtype) + offset.astype(x.dtype)


def fold_norm(norm, w, b):
  """(w', b') with LayerNorm(x) @ w + b == normalize(x) @ w' + b', for LayerNorm params (scale, offset)."""
  scale, offset = norm
  # offset @ w as a sum of products: a [C] x [C, O] vector product, not a layer of the model.
  return scale[:, None] * w, b + jnp.sum(offset[:, None] * w, axis=0)


def _dense(x, w, b):
  return jnp.einsum("...c,co->...o", x, w) + b


def _check_heads(name: str, channels: int, heads: int) -> None:
  if heads <= 0 or channels <= 0:
    raise ValueError(f"{name}: heads={heads} and channels={channels} must be positive.")
  if channels % heads:
    raise ValueError(f"{name}: {heads} heads do not divide {channels} channels.")


def _split_heads(x, heads: int):
  return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


class MultiHeadAttention(hk.Module):
  """Projects queries, keys and values, attends per head, and projects back to `output_channels`.

  Parameters `query`, `key`, `value`, `output` as `hk.Linear`s. Queries and keys/values can come
  normalised with their LayerNorm's (scale, offset) (`query_norm`, `input_norm`), folded into the
  projections. Self-attention (`keys_values is queries`) projects q, k and v in one matmul.
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

  def __call__(
    self,
    queries,
    keys_values,
    mask=None,
    *,
    query_norm=None,
    input_norm=None,
    memory=None,
    return_weights: bool = False,
    memory_only: bool = False,
  ):
    """queries [B, N, D], keys_values [B, M, C], mask bool [B, M] -> [B, N, output_channels].

    Args:
      query_norm, input_norm: the (scale, offset) of the LayerNorm whose `normalize` the queries /
        keys_values already went through; None if they are used as given.
      memory: keys and values from an earlier `memory_only` call on the same keys_values (weight-shared
        repeats compute them once).
      return_weights: also return the attention weights [B, H, N, M].
      memory_only: return only the keys and values ([B, M, H, Q], [B, M, H, V]), or None when folded.
    """
    h, qk, vc = self.num_heads, self.qk_channels, self.v_channels
    self_attention = keys_values is queries
    c = keys_values.shape[-1]
    # Parameters are created where first needed: a memory_only call does not know the queries' width.
    fold_or_wb = lambda norm, wb: fold_norm(norm, *wb) if norm is not None else wb
    wk, _ = fold_or_wb(input_norm, _DenseParams(name="key")(c, qk))  # The key bias shifts whole rows
    wv, bv = fold_or_wb(input_norm, _DenseParams(name="value")(c, vc))  # of logits: softmax ignores it.
    fold = not self_attention and self.folds(
      keys_values.shape[1] if queries is None else queries.shape[1], keys_values.shape[1], c
    )
    if memory_only or (memory is None and not fold and not self_attention):
      if not fold:
        kv = _dense(keys_values, jnp.concatenate([wk, wv], axis=1), jnp.concatenate([jnp.zeros_like(bv), bv]))
        memory = _split_heads(kv[..., :qk], h), _split_heads(kv[..., qk:], h)  # [B, M, H, Q], [B, M, H, V]
      if memory_only:
        return None if fold else memory
    wq, bq = fold_or_wb(query_norm, _DenseParams(name="query")(queries.shape[-1], qk))
    w_out, b_out = _DenseParams(name="output")(vc, self.output_channels)

    attend = functools.partial(
      dot_product_attention,
      mask=mask,
      impl=self.attention_impl,
      chunk_size=None if self_attention else self.chunk_size,
      return_weights=return_weights,
    )
    if self_attention:
      w = jnp.concatenate([wq, wk, wv], axis=1)
      qkv = _dense(queries, w, jnp.concatenate([bq, jnp.zeros_like(bq), bv]))  # [B, N, 2 Q + V]
      q, k, v = (_split_heads(x, h) for x in jnp.split(qkv, [qk, 2 * qk], axis=-1))
      result = attend(q, k, v)
    elif fold:
      q = _split_heads(_dense(queries, wq, bq), h)  # [B, N, H, Q]
      # Queries in the inputs' channels, one per head; the normalised inputs serve as keys and values.
      q_in = jnp.einsum("bnhq,chq->bnhc", q, wk.reshape(c, h, qk // h))  # [B, N, H, C]
      x = keys_values[:, :, None, :]  # [B, M, 1, C]
      result = attend(q_in, x, x, scale=(qk // h) ** -0.5)  # [B, N, H, C]: the attended inputs
    else:
      result = attend(_split_heads(_dense(queries, wq, bq), h), *memory)
    out, weights = result if return_weights else (result, None)  # [B, N, H, V or C], [B, H, N, M]
    if fold:
      out = jnp.einsum("bnhc,chv->bnhv", out, wv.reshape(c, h, vc // h)) + bv.reshape(h, vc // h)
    out = _dense(out.reshape(*out.shape[:-2], vc), w_out, b_out)
    return (out, weights) if return_weights else out


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

  def memory(self, inputs, *, normalized: bool = False):
    """The keys and values this block reads from `inputs` [B, M, C] (None if folded into the queries).

    Computing them once lets weight-shared repeats of the block skip the [M, C] projections.
    """
    return self(None, inputs, is_training=False, normalized=normalized, memory_only=True)

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
    memory_only: bool = False,
  ):
    """latents [B, N, D], inputs [B, M, C], input_mask bool [B, M] -> [B, N, D].

    `normalized`: inputs are already `normalize(inputs)` (shared by all cross-attends); `memory`: from
    `self.memory(inputs)`. With `return_weights`, also the attention weights [B, H, N, M].
    """
    c = inputs.shape[-1]
    qk = self.qk_channels or c
    v = self.v_channels or qk
    d = None if latents is None else latents.shape[-1]
    attend = MultiHeadAttention(
      self.num_heads,
      qk,
      v,
      d or qk,
      self.attention_impl,
      self.chunk_size,
      self.fold_projections,
      name="attention",
    )
    input_norm = _NormParams(name="input_norm")(c)
    inputs = inputs if normalized else normalize(inputs)
    if memory_only:
      return attend(None, inputs, input_norm=input_norm, memory_only=True)
    query_norm = _NormParams(name="query_norm")(d)
    x = attend(
      normalize(latents),
      inputs,
      input_mask,
      query_norm=query_norm,
      input_norm=input_norm,
      memory=memory,
      return_weights=return_weights,
    )
    x, weights = x if return_weights else (x, None)
    latents = latents + _dropout(x, self.dropout_rate, is_training)
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
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.num_heads = num_heads
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate
    self.attention_impl = attention_impl

  def __call__(self, x, *, mask=None, is_training: bool):
    """x [B, N, D], mask bool [B, N] -> [B, N, D]."""
    d = x.shape[-1]
    attend = MultiHeadAttention(self.num_heads, d, d, d, self.attention_impl, name="attention")
    norm = _NormParams(name="norm")(d)
    y = normalize(x)
    x = x + _dropout(attend(y, y, mask, query_norm=norm, input_norm=norm), self.dropout_rate, is_training)
    mlp_norm = _NormParams(name="mlp_norm")(d)
    mlp = MLP(self.widening_factor, self.dropout_rate, name="mlp")
    return x + mlp(normalize(x), is_training=is_training, norm=mlp_norm)
