"""Speed switches change only speed and memory (attention paths, scan, remat, precision); the benchmark."""

import functools
import json
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, child_env, run

from perceiver_jax import Perceiver, dot_product_attention
from perceiver_jax.tools import benchmark, flops
from perceiver_jax.training import build


def randomize(params, seed=1):
  """Random values everywhere (the classifier starts at zero, which would hide any difference)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
    tree, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
  )


def reference_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(Q)) v written out, heads broadcast: q [B, N, H, Q], k/v [B, M, G, *]."""
  k, v = (jnp.broadcast_to(x, (*x.shape[:2], q.shape[2], x.shape[3])) for x in (k, v))
  logits = jnp.einsum("bnhq,bmhq->bhnm", q, k) / np.sqrt(q.shape[-1])
  logits = jnp.where(mask[:, None, None, :], logits, -1e30)
  return jnp.einsum("bhnm,bmhv->bnhv", jax.nn.softmax(logits, axis=-1), v)


def attention_case(kv_heads, num_queries):
  """q [2, N, 2, 8]; k, v [2, 37, kv_heads, 8]; a mask keeping 37 and 20 keys; an output cotangent."""
  kq, kk, kv, kc = jax.random.split(jax.random.PRNGKey(kv_heads), 4)
  q = jax.random.normal(kq, (2, num_queries, 2, 8))
  k = 2.0 * jax.random.normal(kk, (2, 37, kv_heads, 8))
  v = jax.random.normal(kv, (2, 37, kv_heads, 8))
  mask = jnp.arange(37)[None] < jnp.array([[37], [20]])
  return q, k, v, mask, jax.random.normal(kc, (2, num_queries, 2, 8))


@functools.partial(jax.jit, static_argnums=(0, 1))
def attention_values_and_grads(impl, chunk, q, k, v, mask, cotangent):
  """impl None: the formula. Returns (out, (dq, dk, dv), weights or None)."""

  def out(q, k, v):
    if impl is None:
      return reference_attention(q, k, v, mask), None
    return dot_product_attention(q, k, v, mask, impl=impl, chunk_size=chunk, return_weights=True)

  loss = lambda q, k, v: jnp.sum(out(q, k, v)[0] * cotangent)
  return out(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.slow
@pytest.mark.parametrize(
  "impl,chunk,kv_heads,num_queries",
  [
    ("xla", None, 2, 6),  # Keys-major (more keys than queries).
    ("xla", None, 2, 40),  # Queries-major, with its own backward.
    ("xla", None, 1, 6),
    ("xla", 8, 2, 6),
    ("xla", 8, 1, 40),
    ("jax", None, 2, 6),
  ],
)
def test_attention_paths_agree_with_the_formula(impl, chunk, kv_heads, num_queries):
  """Both XLA layouts, chunked (37 keys in chunks of 8: padded and masked) and jax.nn; G = 1 shares a
  key/value head among the query heads."""
  case = attention_case(kv_heads, num_queries)
  (want, _), want_grads = attention_values_and_grads(None, None, *case)
  (got, weights), grads = attention_values_and_grads(impl, chunk, *case)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert_trees_close(grads, want_grads, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  assert float(jnp.max(weights[1, :, :, 20:])) == 0.0  # Masked keys get no weight.


TINY = dict(
  num_classes=5,
  num_latents=8,
  latent_channels=16,
  num_cross_attends=3,  # Two shared repeats: a real scan.
  num_latent_transformers=3,
  num_self_attends_per_block=1,
  num_self_heads=2,
)


def perceiver_outputs(switches, tokens, mask, params):
  """(parameter shapes, logits, gradients of a random projection of the logits, attention weights)."""
  kw = {**TINY, **switches}
  forward = hk.transform(
    lambda x, m: Perceiver(**kw)(x, input_mask=m, is_training=True, return_attention=True)
  )
  shapes = jax.tree.map(lambda x: x.shape, jax.eval_shape(forward.init, jax.random.PRNGKey(0), tokens, mask))
  direction = jax.random.normal(jax.random.PRNGKey(5), (tokens.shape[0], TINY["num_classes"]))

  def loss(p):
    logits, weights = forward.apply(p, None, tokens, mask)
    return jnp.sum(logits * direction), (logits, weights)

  (_, (logits, weights)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return shapes, logits, grads, weights


@pytest.fixture(scope="module")
def reference():
  """Unrolled, no remat, unchunked: (tokens, mask, random params, logits, grads, attention weights)."""
  tokens = jax.random.normal(jax.random.PRNGKey(2), (3, 20, 6))
  mask = jnp.arange(20)[None] < jnp.array([[20], [13], [20]])
  forward = hk.transform(lambda x, m: Perceiver(**TINY)(x, input_mask=m, is_training=True))
  params = randomize(jax.eval_shape(forward.init, jax.random.PRNGKey(0), tokens, mask))
  _, logits, grads, weights = perceiver_outputs(dict(scan_repeats=False), tokens, mask, params)
  assert float(jnp.std(logits)) > 0.1 and len(weights) == TINY["num_cross_attends"]
  return tokens, mask, params, logits, grads, weights


@pytest.mark.slow
def test_scanned_repeats_agree_with_unrolled(reference):
  """Same parameter tree, logits, gradients and per-cross-attend weights (the scan's stacked outputs)."""
  tokens, mask, params, logits, grads, weights = reference
  shapes, got, got_grads, got_weights = perceiver_outputs(dict(scan_repeats=True), tokens, mask, params)
  assert shapes == jax.tree.map(lambda x: x.shape, params)
  np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
  assert_trees_close(got_grads, grads, rtol=1e-3, atol=1e-4)
  assert isinstance(got_weights, list) and len(got_weights) == len(weights)
  assert_trees_close(got_weights, weights, rtol=1e-4, atol=1e-6)


# Structures whose repeats the scan runs with the weights of each repeat: blocks scanned, unshared repeats,
# cross-attends at the start, one cross-attend before three latent Transformers, and shared cross-attends
# that keep their keys and values (two heads, not folded), whose unshared first one runs before the scan.
STRUCTURES = [
  dict(num_self_attends_per_block=2, scan_blocks=True, remat=True),
  dict(
    share_cross_attends=False, share_latent_transformers=False, num_self_attends_per_block=2, scan_blocks=True
  ),
  dict(share_latent_transformers=False),
  dict(cross_attend_layout="start", num_self_attends_per_block=2, scan_blocks=True),
  dict(num_cross_attends=1, num_self_attends_per_block=2, scan_blocks=True),
  dict(num_cross_heads=2, fold_cross_projections=False, num_self_attends_per_block=2, scan_blocks=True),
]


@pytest.mark.slow
@pytest.mark.parametrize("structure", STRUCTURES)
def test_scans_over_the_weights_of_each_repeat_agree_with_unrolled(reference, structure):
  """The same function, gradients, weights and initial parameters as the unrolled model, with every
  distinct block traced once (its matmuls appear once in the scanned program)."""
  tokens, mask, params, *_ = reference
  unrolled, scanned = (
    {**structure, "scan_repeats": False, "scan_blocks": False},
    {**structure, "scan_repeats": True},
  )
  model = lambda s: hk.transform(lambda x, m: Perceiver(**{**TINY, **s})(x, input_mask=m, is_training=True))
  initial = [model(s).init(jax.random.PRNGKey(0), tokens, mask) for s in (unrolled, scanned)]
  assert_trees_close(initial[0], initial[1], rtol=0, atol=0)
  params = randomize(initial[0])
  shapes, logits, grads, weights = perceiver_outputs(unrolled, tokens, mask, params)
  got_shapes, got, got_grads, got_weights = perceiver_outputs(scanned, tokens, mask, params)
  assert got_shapes == shapes
  np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
  assert_trees_close(got_grads, grads, rtol=1e-3, atol=1e-4)
  assert len(got_weights) == len(weights) == (TINY | structure)["num_cross_attends"]
  assert_trees_close(got_weights, weights, rtol=1e-4, atol=1e-6)
  count = lambda s, p: str(jax.make_jaxpr(model(s).apply)(p, None, tokens, mask)).count("dot_general")
  matmuls = [count(s, params) for s in (unrolled, scanned)]
  # One repeat, unrolled: each distinct block's matmuls once (twice where the first repeat runs apart).
  one = {**structure, "num_cross_attends": 1, "num_latent_transformers": 1, "scan_repeats": False}
  one_repeat = count(one, model(one).init(jax.random.PRNGKey(0), tokens, mask))
  assert matmuls[1] < matmuls[0]
  assert matmuls[1] <= 2 * one_repeat


@pytest.mark.slow
@pytest.mark.parametrize(
  "switches",
  [
    dict(scan_repeats=True, remat=True, cross_attention_chunk_size=7),
    dict(scan_repeats=True, attention_impl="jax", fold_cross_projections=False),
  ],
)
def test_remat_chunking_and_jax_attention_give_the_same_gradients(reference, switches):
  tokens, mask, params, logits, grads, _ = reference
  _, got, got_grads, _ = perceiver_outputs(switches, tokens, mask, params)
  np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
  assert_trees_close(got_grads, grads, rtol=1e-3, atol=1e-4)


def bench_config(config_loader, arg="runlocal"):
  return config_loader("benchmark", arg)


@pytest.mark.slow
def test_bfloat16_logits_agree_with_float32(config_loader):
  config = bench_config(config_loader)
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))
  f32 = build.make_model(config)
  params, state = jax.eval_shape(lambda: f32.init(jax.random.PRNGKey(0), images, is_training=False))
  params = randomize(params)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  want = jax.jit(lambda p: f32.apply(p, state, None, images, is_training=False)[0])(params)
  config.precision = "bfloat16"
  bf16 = build.make_model(config)
  got = jax.jit(lambda p: bf16.apply(p, state, None, images, is_training=False)[0])(params)
  assert got.dtype == jnp.float32  # Logits come back in float32 for the loss.
  scale = float(jnp.std(want))
  assert scale > 0.1
  # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%); through a dozen layers the
  # logits stay within a few percent of their spread.
  error = float(jnp.max(jnp.abs(got - want)))
  assert error < 0.05 * scale, (error, scale)
  assert error > 0  # It did compute in bfloat16.


def test_bench_small_flops_match_the_readme(config_loader):
  # shared/bench/README.md: 1.712 GFLOPs forward and 5.137 per trained image.
  config = bench_config(config_loader, "")
  forward = benchmark.model_forward_flops(config)
  assert forward / 1e9 == pytest.approx(1.712, abs=5e-4)
  assert benchmark.TRAIN_FLOPS_PER_FORWARD * forward / 1e9 == pytest.approx(5.137, abs=5e-4)
  paper = bench_config(config_loader, "paper")
  assert benchmark.model_forward_flops(paper) / 1e9 == pytest.approx(707.2, rel=0.01)


@pytest.mark.slow
def test_benchmark_tool_prints_every_field_and_bfloat16_training_stays_finite(config_loader, capsys):
  """The real train step (forward, backward, Adam) three times in bfloat16 on 8 devices."""
  config = bench_config(config_loader, "runlocal,bfloat16")
  result = benchmark.main(config)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(printed) == set(benchmark.FIELDS) == set(result)
  assert printed["devices"] == jax.local_device_count() and printed["batch"] == 8
  assert printed["precision"] == "bfloat16"
  # A NaN would stay in the parameters: a finite last loss means every step was finite. Zero-initialised
  # logits start at log(10).
  assert np.isfinite(printed["loss"]) and 0 < printed["loss"] < 1.5 * np.log(10)
  assert printed["step_s"] > 0 and printed["compile_s"] > 0 and printed["matmul_ceiling_gflops"] > 0
  assert printed["examples_per_s"] == pytest.approx(printed["batch"] / printed["step_s"])
  model = flops.perceiver_forward_flops(config.model, 8 * 8, 3 + 2 * (2 * 4 + 1))
  assert printed["model_gflops_per_image"] == pytest.approx(3 * model / 1e9)
  achieved = printed["examples_per_s"] * printed["model_gflops_per_image"]
  # mfu pairs every step with the matmul timed right after it (a median of ratios), so it equals the ratio
  # of the medians only when the machine's speed holds still between steps: close, not exact.
  assert printed["mfu"] == pytest.approx(achieved / printed["matmul_ceiling_gflops"], rel=0.3)
  # XLA's count (every repeat, elementwise work too, shared work done once) is near the model's.
  per_step = printed["model_gflops_per_image"] * printed["batch"]
  assert 0.5 * per_step < printed["xla_gflops_per_step"] < 2 * per_step
  assert printed["peak_host_mb"] > 0 and printed["xla_temp_mb"] > 0


@pytest.mark.parametrize(
  "cores, batch, want", [(2, 32, 2), (8, 32, 8), (6, 32, 4), (96, 32, 32), (1, 32, 1), (3, None, 3)]
)
def test_one_cpu_device_per_core_that_divides_the_batch(cores, batch, want):
  assert benchmark.default_cpu_devices(cores, batch) == want


def test_an_explicit_device_count_is_kept(config_loader):
  # This process runs with --xla_force_host_platform_device_count=8 (conftest.py): the benchmark keeps it.
  assert benchmark.set_cpu_devices(bench_config(config_loader, "runlocal,cpu_devices=2")) is None
  assert jax.local_device_count() == 8


@pytest.mark.slow
def test_benchmark_script_runs_on_the_cpu_devices_of_its_config():
  """scripts/benchmark.py in a fresh process without a device flag: the config's count of CPU devices."""
  command = [sys.executable, "scripts/benchmark.py", "--config=configs/benchmark.py:runlocal,cpu_devices=2"]
  out = run(command, child_env(devices=None))
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 2 and result["batch"] == 8 and np.isfinite(result["loss"])
