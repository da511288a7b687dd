"""The attention function and its kernels: `dot_product_attention`, the one attention of the codebase.

Axes: B batch, N queries (latents), M keys (inputs), H heads, Q per-head q/k channels, V per-head value
channels.

Per backend (`kernels_for(platform)`, which `build.make_model` applies for the platform it is traced for):
on a CPU, attention is laid out for XLA:CPU's matmul library with its own backward (`_attend`), and dense
layers (`dense.py`) have their own backward too, both measured faster there (docs/performance.md). On TPU
and GPU the plain path (`_plain_attend`, `jnp.einsum` with XLA's own derivative) lets XLA choose layouts
and fusions. `chunk_size` attends to the keys in chunks (an exact online softmax, with its own backward).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax

ATTENTION_IMPLS = ("xla", "jax", "cudnn")
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
