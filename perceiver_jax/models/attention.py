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
- One key/value head shared by all query heads needs no head axis at all.
- Single-head cross-attention can fold the key and value projections into the queries: with
  k = x W_k and v = x W_v, q k^T = (q W_k^T) x^T and p v = (p x) W_v, so the [M, C] x [C, Q] projections
  of all M inputs become [N, Q] x [Q, C] products on the N latents (`fold_projections`).

Per backend (`kernels_for(platform)`, which `build.make_model` applies for the platform it is traced for):
on a CPU, attention is laid out for XLA:CPU's matmul library with its own backward (`_attend`), and dense
layers have their own backward (`_matmul`: the weight gradient x^T dy transposes the narrower operand,
held by `lax.optimization_barrier`), both measured faster there (docs/performance.md). On TPU and GPU the
plain path (`_plain_attend`, `jnp.einsum` with XLA's own derivative) lets XLA choose layouts and fusions.

`ReferenceCrossAttentionBlock` and `ReferenceSelfAttentionBlock` are the blocks written plainly
(`hk.Linear`, `hk.LayerNorm`, a few lines of attention) with the same parameters: the tests hold every
path above equal to them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import haiku as hk
import jax
import jax.numpy as jnp
from jax import lax

ATTENTION_IMPLS = ("xla", "jax", "cudnn")
LAYER_NORM_EPS = 1e-5  # hk.LayerNorm's default.
# The platforms whose hand-written kernels (`_attend`'s layouts and backward, `_matmul`) are measured to help.
_KERNEL_PLATFORMS = ("cpu",)
_platform: list[str] = []  # Innermost `kernels_for` platform; none set: jax.default_backend().


@contextlib.contextmanager
def kernels_for(platform: str) -> Iterator[None]:
  """Traces the blocks inside with the kernels of `platform` ('cpu', 'tpu', 'gpu'; see the module doc)."""
  _platform.append(platform)
  try:
    yield
  finally:
    _platform.pop()


def cpu_kernels() -> bool:
  """Whether the blocks being traced use the CPU's hand-written kernels."""
  return (_platform[-1] if _platform else jax.default_backend()) in _KERNEL_PLATFORMS


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
    impl: 'xla': XLA with layouts chosen for the CPU matmul library (see `_attend`), any head size;
      'jax': `jax.nn.dot_product_attention`, which uses cuDNN's fused kernel where it can and XLA
      elsewhere; 'cudnn': that kernel or an error (GPU, float16/bfloat16, head sizes it supports).
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
  qs, ks, vs, key_mask, from_heads = _batched_heads(q * jnp.asarray(scale, q.dtype), k, v, mask)
  weights = None
  if impl != "xla":
    mask4 = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, M]
    out = jax.nn.dot_product_attention(
      q, k, v, mask=mask4, scale=scale, implementation=None if impl == "jax" else "cudnn"
    ).astype(v.dtype)
  elif chunk_size is not None and chunk_size < k.shape[1]:
    out = from_heads(_chunked_attention(qs, ks, vs, key_mask, chunk_size))
  else:
    out, weights = (_attend if cpu_kernels() else _plain_attend)(qs, ks, vs, key_mask)
    out = from_heads(out)
  if not return_weights:
    return out
  if weights is None:  # Only the unchunked 'xla' path has them at hand: the others' are computed again.
    weights = _softmax_weights(qs, ks, key_mask)
  return out, weights.reshape(q.shape[0], q.shape[2], q.shape[1], k.shape[1])


def _batched_heads(q, k, v, mask):
  """Layouts for the batched matmuls, and the way back to [B, N, H, V].

  One key/value head: its H query heads are H * N queries, [B, H N, Q] against [B, M, Q], with no head
  axis to transpose (for H = 1 the reshapes are free). Otherwise heads-major: [B, H, N, Q].
  """
  b, n, h, _ = q.shape
  if k.shape[2] == 1:
    qs = jnp.swapaxes(q, 1, 2).reshape(b, h * n, -1)
    return qs, k[:, :, 0], v[:, :, 0], mask, lambda x: jnp.swapaxes(x.reshape(b, h, n, -1), 1, 2)
  key_mask = None if mask is None else mask[:, None, :]  # [B, 1, M]: batch axes then keys
  qs, ks, vs = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  return qs, ks, vs, key_mask, lambda x: jnp.swapaxes(x, 1, 2)


def _masked(s, key_mask, keys_axis: int):
  """Logits s [..., N, M] (keys_axis -1) or [..., M, N] (-2) with masked keys at the most negative finite
  value (a row with every key masked stays finite); key_mask is [..., M], the batch axes then the keys."""
  if key_mask is None:
    return s
  key_mask = key_mask[..., None, :] if keys_axis == -1 else key_mask[..., :, None]
  return jnp.where(key_mask, s, jnp.finfo(s.dtype).min)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _cotangent_in(x, dtype):
  """x as it is; its cotangent cast to `dtype`, so the products that differentiate a bf16 x bf16 -> f32
  matmul take bf16 operands (not the f32 cotangent against a bf16 operand, an f32 matmul on a TPU)."""
  return x


_cotangent_in.defvjp(lambda x, dtype: (x, None), lambda dtype, _, ct: (ct.astype(dtype),))


def _logits(q, k, key_mask):
  """Masked logits q k^T [..., N, M] in float32, queries-major."""
  s = jnp.einsum("...nq,...mq->...nm", q, k, preferred_element_type=jnp.float32)
  return _masked(_cotangent_in(s, q.dtype), key_mask, -1)


def _softmax_weights(q, k, key_mask):
  """softmax(q k^T) [..., N, M] in float32."""
  return jax.nn.softmax(_logits(q, k, key_mask), axis=-1)


def _plain_attend(q, k, v, key_mask):
  """softmax(q k^T) v as written ([..., N, V], weights [..., N, M]) for JAX to differentiate; f32 softmax."""
  p = _softmax_weights(q, k, key_mask)
  out = jnp.einsum("...nm,...mv->...nv", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return _cotangent_in(out, v.dtype).astype(v.dtype), p


def _attend(q, k, v, key_mask):
  """softmax(q k^T) v for q [..., N, Q], k [..., M, Q], v [..., M, V]: ([..., N, V], weights [..., N, M]).

  Laid out for the CPU's matmul library (YNNPACK under XLA), which runs A B and A B^T products fused with
  their elementwise neighbours but leaves A^T B ones to a slower path: keys-major logits [..., M, N] with
  the softmax over the major axis when there are more keys than queries (cross-attention: 1.3-1.5x
  faster there), queries-major otherwise, with a backward that never contracts a big operand's major
  axis (`_queries_major`). Logits and softmax in float32.
  """
  if k.shape[-2] > q.shape[-2]:
    s = jnp.einsum("...mq,...nq->...mn", k, q, preferred_element_type=jnp.float32)
    p = jax.nn.softmax(_masked(s, key_mask, -2), axis=-2)  # [..., M, N]
    out = jnp.einsum("...mn,...mv->...nv", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype), jnp.swapaxes(p, -1, -2)
  return _queries_major(q, k, v, key_mask)


@jax.custom_vjp
def _queries_major(q, k, v, key_mask):
  return _queries_major_fwd(q, k, v, key_mask)[0]


def _queries_major_fwd(q, k, v, key_mask):
  p = _softmax_weights(q, k, key_mask)  # [..., N, M]
  out = jnp.einsum("...nm,...mv->...nv", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  out = out.astype(v.dtype)
  return (out, p), (q, k, v, key_mask, p, out)


def _queries_major_bwd(residuals, cotangents):
  q, k, v, key_mask, p, out = residuals
  d_out, d_p = cotangents  # d_p: a cotangent of the returned weights (zero in training).
  dp = jnp.einsum("...nv,...mv->...nm", d_out, v, preferred_element_type=jnp.float32) + d_p
  # Softmax backward, dS = p * (dP - rowsum(p * dP)), with rowsum(p * dP_out) = rowsum(d_out * out).
  delta = jnp.sum(d_out.astype(jnp.float32) * out, axis=-1, keepdims=True)
  delta = delta + jnp.sum(p * d_p, axis=-1, keepdims=True)
  ds = p * (dp - delta)
  dq = jnp.einsum("...nm,...mq->...nq", ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
  # dK = dS^T q and dV = p^T d_out, as (q^T dS)^T and (d_out^T p)^T: transposing the small [N, Q]
  # operands keeps both products in the fast A B form. The barrier keeps XLA from folding the
  # transposes back into the products (which would make them A^T B again).
  q_t, d_out_t = lax.optimization_barrier((jnp.swapaxes(q, -1, -2), jnp.swapaxes(d_out, -1, -2)))
  dk_t = jnp.einsum("...qn,...nm->...qm", q_t, ds.astype(q.dtype), preferred_element_type=jnp.float32)
  dv_t = jnp.einsum("...vn,...nm->...vm", d_out_t, p.astype(v.dtype), preferred_element_type=jnp.float32)
  dk, dv = jnp.swapaxes(dk_t, -1, -2), jnp.swapaxes(dv_t, -1, -2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_queries_major.defvjp(_queries_major_fwd, _queries_major_bwd)


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


def _chunk_inputs(k, v, key_mask, chunk):
  """Key chunks [C, ..., chunk, Q], value chunks and mask chunks [C, ..., chunk]; padding is masked."""
  m = k.shape[-2]
  if key_mask is None:
    key_mask = jnp.ones((k.shape[0], *[1] * (k.ndim - 3), m), bool)
  keys_axis = k.ndim - 2
  masks = _chunks(key_mask, chunk, key_mask.ndim - 1)
  return _chunks(k, chunk, keys_axis), _chunks(v, chunk, keys_axis), masks


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_attention(q, k, v, key_mask, chunk):
  """softmax(q k^T) v over key chunks; q [..., N, Q], k [..., M, Q], v [..., M, V], key_mask [..., M]."""
  return _chunked_attention_fwd(q, k, v, key_mask, chunk)[0]


def varying_like(tree, *refs):
  """`tree` typed as varying over every manual mesh axis (shard_map) that any of `refs` varies over: a scan's
  initial carry made of constants must say so when the step's output depends on varying values."""
  axes = lambda x: jax.typeof(x).manual_axis_type.varying
  want = frozenset().union(*(axes(r) for r in refs if r is not None))

  def vary(x):
    missing = tuple(sorted(want - axes(x)))
    return lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(vary, tree)


def _chunked_attention_fwd(q, k, v, key_mask, chunk):
  """Online softmax over key chunks: running max, running sum and running weighted sum, rescaled."""
  ks, vs, masks = _chunk_inputs(k, v, key_mask, chunk)
  init = (
    jnp.full((*q.shape[:-1], 1), jnp.finfo(jnp.float32).min),  # running max
    jnp.zeros((*q.shape[:-1], 1), jnp.float32),  # running sum of exp
    jnp.zeros((*q.shape[:-1], v.shape[-1]), jnp.float32),  # running weighted sum
  )

  def step(carry, chunk_inputs):
    m, total, acc = carry
    k_c, v_c, mask_c = chunk_inputs
    s = _logits(q, k_c, mask_c)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
    e = jnp.exp(s - m_new)
    rescale = jnp.exp(m - m_new)
    total = total * rescale + jnp.sum(e, axis=-1, keepdims=True)
    acc = acc * rescale + jnp.einsum(
      "...nm,...mv->...nv", e.astype(v.dtype), v_c, preferred_element_type=jnp.float32
    )
    return (m_new, total, acc), None

  (m, total, acc), _ = lax.scan(step, varying_like(init, q, k, v, key_mask), (ks, vs, masks))
  out = (acc / total).astype(v.dtype)
  log_sum = m + jnp.log(total)  # [..., N, 1]
  return out, (q, k, v, key_mask, out, log_sum)


def _chunked_attention_bwd(chunk, residuals, d_out):
  q, k, v, key_mask, out, log_sum = residuals
  ks, vs, masks = _chunk_inputs(k, v, key_mask, chunk)
  # dS = p * (dP - delta) with delta = rowsum(p * dP) = rowsum(d_out * out): a sum over V, not over M.
  delta = jnp.sum(d_out.astype(jnp.float32) * out, axis=-1, keepdims=True)  # [..., N, 1]
  d_out = d_out.astype(v.dtype)

  def step(dq, chunk_inputs):
    k_c, v_c, mask_c = chunk_inputs
    p = jnp.exp(_logits(q, k_c, mask_c) - log_sum)  # [..., N, chunk]
    dp = jnp.einsum("...nv,...mv->...nm", d_out, v_c, preferred_element_type=jnp.float32)
    ds = (p * (dp - delta)).astype(q.dtype)
    dq = dq + jnp.einsum("...nm,...mq->...nq", ds, k_c, preferred_element_type=jnp.float32)
    dk_c = jnp.einsum("...nm,...nq->...mq", ds, q, preferred_element_type=jnp.float32)
    dv_c = jnp.einsum("...nm,...nv->...mv", p.astype(v.dtype), d_out, preferred_element_type=jnp.float32)
    return dq, (dk_c.astype(k.dtype), dv_c.astype(v.dtype))

  dq0 = varying_like(jnp.zeros(q.shape, jnp.float32), q, k, v, key_mask, d_out)
  dq, (dks, dvs) = lax.scan(step, dq0, (ks, vs, masks))
  m = k.shape[-2]
  return dq.astype(q.dtype), _unchunk(dks, k.ndim - 2, m), _unchunk(dvs, v.ndim - 2, m), None


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
    w_init = hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
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
  return (_matmul(x, w) if cpu_kernels() else jnp.einsum("...c,co->...o", x, w)) + b


@jax.custom_vjp
def _matmul(x, w):
  return jnp.einsum("...c,co->...o", x, w)


def _matmul_fwd(x, w):
  return _matmul(x, w), (x, w)


def _matmul_bwd(res, dy):
  x, w = res
  dx = jnp.einsum("...o,co->...c", dy, w)
  # dW = x^T dy contracts the tokens, the major axis of both: transpose the narrower operand explicitly
  # (the barrier keeps XLA from folding it back), so the product is a plain A B.
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
  if x2.shape[1] <= dy2.shape[1]:
    xt = lax.optimization_barrier(x2.T)
    dw = jnp.einsum("cn,no->co", xt, dy2)
  else:
    dyt = lax.optimization_barrier(dy2.T)
    dw = jnp.einsum("on,nc->co", dyt, x2)
  return dx, dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


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


# ----------------------------------------------------------------------------------------------------
# The blocks written plainly, with the same parameters: what every path above is tested against.


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
