"""Model size and FLOPs in the paper's convention, computed without running anything.

FLOPs are 2 x multiply-adds of the matrix products (dense layers, attention, convolutions), every layer
counted each time it runs. The Perceiver's count is analytic (`perceiver_forward_flops`), so it stays the
paper's however the implementation saves work (a scan counts its body once per repeat; shared
cross-attends' key/value projections, computed once, are still counted every time, as the paper does).
Other models are counted from their jaxpr (`jaxpr_matmul_flops`), which sees each product as traced.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
from jax.extend import core as jex_core

from perceiver_jax.data import spec
from perceiver_jax.training import build


def perceiver_forward_flops(
  model: ml_collections.ConfigDict | dict, num_tokens: int, token_channels: int
) -> int:
  """Forward FLOPs per example of `Perceiver(**model)` on tokens [M, C]."""
  m, c = num_tokens, token_channels
  n, d = model["num_latents"], model["latent_channels"]
  k, r = model["num_cross_attends"], model["num_latent_transformers"]
  layers = model["num_self_attends_per_block"]
  w = model.get("widening_factor", 1)
  qk = model.get("cross_qk_channels") or c
  v = qk
  mlp = 2 * n * d * d * w
  cross = n * d * qk + m * c * qk + m * c * v + n * m * qk + n * m * v + n * v * d + mlp
  block = 3 * n * d * d + 2 * n * n * d + n * d * d + mlp
  head = d * model["num_classes"]
  return 2 * (k * cross + r * layers * block + head)


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, jex_core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jex_core.Jaxpr):
        yield v


def _count(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      # Every output element is one dot product over the contracted axes.
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial) axes
      kernel = math.prod(rhs[i] for i in spec[1:])
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * kernel
    elif name == "scan":
      total += eqn.params["length"] * sum(_count(j) for j in _sub_jaxprs(eqn))
    elif name == "cond":
      total += max(_count(j) for j in _sub_jaxprs(eqn))
    else:
      total += sum(_count(j) for j in _sub_jaxprs(eqn))
  return total


def jaxpr_matmul_flops(fn, *args, **kwargs) -> int:
  """Matrix-product FLOPs of `fn(*args)` as traced (args may be ShapeDtypeStructs); nothing runs."""
  return _count(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def _abstract_forward(config: ml_collections.ConfigDict):
  model = build.make_model(config)
  # One example as the batch spec says (mask included); a train example is one window (spec.eval_windows).
  batch = spec.batch_spec(config, 1, "train")
  keys = jax.ShapeDtypeStruct((1,), jax.random.key(0).dtype)
  rng = jax.random.PRNGKey(0)
  params, state = jax.eval_shape(
    lambda: model.init(
      rng, build.dummy_inputs(config, 1), is_training=True, example_keys=jax.random.split(rng, 1)
    )
  )
  return model, params, state, batch, keys


def model_stats(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Parameter count and forward GFLOPs per example of `config`'s model, computed abstractly."""
  model, params, state, batch, keys = _abstract_forward(config)
  num_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
  if config.model_name == "perceiver":
    flops = perceiver_forward_flops(config.model, *build.token_shape(config))
  else:
    flops = jaxpr_matmul_flops(
      lambda p, s, x, m, k: model.apply(p, s, None, x, is_training=False, input_mask=m, example_keys=k)[0],
      params,
      state,
      batch["inputs"],
      batch.get("input_mask"),
      keys,
    )
  return {"params": num_params, "gflops": flops / 1e9}
