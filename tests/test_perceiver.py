"""The Perceiver's properties: order blindness, masking, the paper's sizes, and clear errors."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_jax import Perceiver
from perceiver_jax.tools import flops

SMALL = dict(
  num_classes=7,
  num_latents=8,
  latent_channels=32,
  num_cross_attends=2,
  num_latent_transformers=2,
  num_self_attends_per_block=2,
  num_self_heads=4,
)


def randomize(params, seed=1):
  """Random values everywhere (the classifier starts at zero, which would hide any difference)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
    tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
  )


def small_perceiver(**overrides):
  kw = {**SMALL, **overrides}
  f = hk.transform(lambda x, mask=None: Perceiver(**kw)(x, input_mask=mask, is_training=False))
  params = jax.jit(f.init)(jax.random.PRNGKey(0), jnp.zeros((1, 5, 6)))
  return hk.Transformed(f.init, jax.jit(f.apply)), jax.jit(randomize)(params)


def count(params, prefix=""):
  return sum(int(np.prod(v.shape)) for k, m in params.items() if k.startswith(prefix) for v in m.values())


@pytest.mark.slow
def test_logits_do_not_depend_on_token_order():
  f, params = small_perceiver()
  tokens = jax.random.normal(jax.random.PRNGKey(2), (3, 20, 6))
  perm = np.random.default_rng(0).permutation(20)
  a = f.apply(params, None, tokens)
  b = f.apply(params, None, tokens[:, perm])
  assert float(jnp.std(a)) > 0.1  # Non-trivial logits, so equality means something.
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  # And the model is not constant: other tokens give other logits.
  other = jax.random.normal(jax.random.PRNGKey(9), tokens.shape)
  assert float(jnp.max(jnp.abs(a - f.apply(params, None, other)))) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("share", [True, False])
def test_masked_padding_changes_nothing(share):
  f, params = small_perceiver(share_cross_attends=share, share_latent_transformers=share)
  tokens = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 6))
  padding = 100.0 * jax.random.normal(jax.random.PRNGKey(4), (2, 5, 6))
  padded = jnp.concatenate([tokens, padding], axis=1)
  mask = jnp.concatenate([jnp.ones((2, 12), bool), jnp.zeros((2, 5), bool)], axis=1)
  want = f.apply(params, None, tokens)
  np.testing.assert_allclose(f.apply(params, None, padded, mask), want, atol=1e-5, rtol=1e-5)
  assert float(jnp.max(jnp.abs(f.apply(params, None, padded) - want))) > 1e-2  # Unmasked, it matters.


@pytest.mark.slow
def test_paper_parameter_counts(config_loader):
  config = config_loader("imagenet")
  _, params, _, _, _ = flops._abstract_forward(config)
  # Hand counts of the ImageNet architecture of Jaegle et al. 2021 (arXiv 2103.03206), Sec. 4.1 and App. A:
  # C = 261 (3 RGB + 2 * (2 * 64 + 1) Fourier, Sec. 3.2), D = 1024, N = 512; 44.9M parameters shared,
  # 326.2M unshared (the weight-sharing ablation).
  assert count(params, "perceiver/~_cross_attend/cross_attend_0/") == 2_776_395
  assert count(params, "perceiver/~_cross_attend/cross_attend_shared/") == 2_776_395
  assert count(params, "perceiver/~_latent_transformer/latent_transformer_block_0/") == 6_301_696
  assert params["perceiver"]["latents"].shape == (512, 1024)
  assert count(params, "perceiver/classifier") == 1_025_000
  assert count(params) == 44_912_254
  unshared = config_loader("imagenet", "unshared")
  assert flops.model_stats(unshared)["params"] == 326_241_856


@pytest.mark.parametrize(
  "arg,gflops,params",
  [
    ("", 707.2, 44.9e6),
    ("num_cross_attends=1", 404.3, 42.1e6),
    ("num_cross_attends=2", 447.6, 44.9e6),
    ("num_cross_attends=4", 534.1, 44.9e6),
    ("cross_attends_only,num_cross_attends=4", 173.1, None),
    ("cross_attends_only", 346.1, None),
  ],
)
def test_paper_flops(config_loader, arg, gflops, params):
  stats = flops.model_stats(config_loader("imagenet", arg))
  assert stats["gflops"] == pytest.approx(gflops, rel=0.015 if arg else 0.01)
  if params:
    assert stats["params"] == pytest.approx(params, rel=0.002)


def test_lowered_cost_analysis_matches_the_analytic_count(config_loader):
  """XLA's count of the lowered forward: per-example matmuls plus a small elementwise share.

  Unshared weights keep XLA from merging the shared cross-attends' identical key/value projections, and
  the model is unrolled (no scan), so every layer appears as often as it runs.
  """
  config = config_loader("imagenet", "runlocal,unshared,num_cross_attends=2,num_latent_transformers=4")
  # Unrolled and with the plain projections: XLA counts a scan body once, and folded cross-attention
  # projections do fewer products than the paper counts.
  config.model.update(
    num_latents=64,
    latent_channels=128,
    num_self_attends_per_block=2,
    scan_repeats=False,
    scan_blocks=False,
    fold_cross_projections=False,
  )
  model, params, state, batch, keys = flops._abstract_forward(config)
  images = batch["inputs"]
  fwd = lambda p, x, k: model.apply(p, state, None, x, is_training=False, example_keys=k)[0]
  lowered = jax.jit(fwd).lower(params, images, keys)
  xla = lowered.cost_analysis()["flops"]
  stats = flops.model_stats(config)
  jaxpr = flops.jaxpr_matmul_flops(fwd, params, images, keys)
  assert jaxpr == pytest.approx(stats["gflops"] * 1e9, rel=1e-9)
  # XLA also counts softmax, LayerNorm, GELU and residual adds: a few percent on top of the matmuls.
  assert stats["gflops"] * 1e9 <= xla <= 1.10 * stats["gflops"] * 1e9


@pytest.mark.parametrize(
  "overrides,field",
  [
    (dict(num_self_heads=5), "num_self_heads"),
    (dict(num_latents=0), "num_latents"),
    (dict(latent_channels=-4), "latent_channels"),
    (dict(cross_qk_channels=6, num_cross_heads=4), "num_cross_heads"),
    (dict(num_cross_attends=3), "num_cross_attends"),
    (dict(cross_attend_layout="middle"), "cross_attend_layout"),
    (dict(dropout_rate=1.5), "dropout_rate"),
  ],
)
def test_bad_model_values_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field):
    small_perceiver(**overrides)


def test_cross_attention_heads_must_divide_input_channels():
  with pytest.raises(ValueError, match="heads do not divide 6 channels"):
    small_perceiver(num_cross_heads=4)
