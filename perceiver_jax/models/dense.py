"""LayerNorm and dense layers as the blocks apply them, with Haiku's parameter names and initialisers.

LayerNorm is split into `normalize` (statistics in float32) and its affine part, which `fold_norm` folds
into the weights of the projection that follows: LN(x) @ w + b == normalize(x) @ (scale * w) + (offset @
w + b). On a CPU a dense layer has its own backward (`_matmul`: the weight gradient x^T dy transposes the
narrower operand, held by `lax.optimization_barrier`), measured faster there (docs/performance.md).
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
from jax import lax

from perceiver_jax.models.attention_kernels import cpu_kernels

LAYER_NORM_EPS = 1e-5  # hk.LayerNorm's default.


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
