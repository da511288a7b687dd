"""The baselines: sizes against the well-known counts, permutation (in)sensitivity, configs, validation."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from perceiver_jax import models
from perceiver_jax.models import baselines
from perceiver_jax.tools import flops
from perceiver_jax.training import build


def abstract_model(config, batch=2):
  """(param count, logits shape) of `config`'s model on a batch of images, traced, nothing executed."""
  model = build.make_model(config)
  spec = build.input_spec(config)
  images = jax.ShapeDtypeStruct((batch, *spec.shape), spec.dtype)
  keys = jax.random.split(jax.random.PRNGKey(0), batch)
  params, state = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, is_training=True), images)
  logits, _ = jax.eval_shape(
    lambda p, s, x: model.apply(p, s, None, x, is_training=False, example_keys=keys), params, state, images
  )
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)), logits.shape


def abstract_params(config):
  """`config`'s model parameters as shapes, {module path: {name: shape}}; nothing executed."""
  model, spec = build.make_model(config), build.input_spec(config)
  images = jax.ShapeDtypeStruct((1, *spec.shape), spec.dtype)
  params, _ = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, is_training=True), images)
  return jax.tree.map(lambda p: p.shape, hk.data_structures.to_haiku_dict(params))


# 261 = 3 RGB + 2 * (2 * 64 + 1) Fourier channels: the stem or patch embedding is wider by 258 channels.
EXTRA_CHANNELS = 261 - 3


def test_resnet50_has_the_well_known_size_plus_a_wider_stem(config_loader):
  count, shape = abstract_model(config_loader("imagenet", "resnet50"))
  assert shape == (2, 1000)
  assert count == 25_557_032 + 7 * 7 * EXTRA_CHANNELS * 64


def test_vit_b16_has_the_well_known_size_plus_a_wider_patch_embedding(config_loader):
  count, shape = abstract_model(config_loader("imagenet", "vit_b16"))
  assert shape == (2, 1000)
  assert count == 86_567_656 + 16 * 16 * EXTRA_CHANNELS * 768


def test_transformer64_size_and_flops(config_loader):
  config = config_loader("imagenet", "transformer64")
  count, shape = abstract_model(config)
  assert shape == (2, 1000)
  d, w, c, layers = 512, 4, 261, 12
  block = 4 * (d * d + d) + (d * w * d + w * d) + (w * d * d + d) + 2 * 2 * d  # attention, MLP, 2 norms
  assert count == (c * d + d) + layers * block + 2 * d + (d * 1000 + 1000)
  tokens = jax.ShapeDtypeStruct((1, 64 * 64, c), jnp.float32)
  f = hk.transform(lambda t: baselines.Transformer(**config.model)(t, is_training=False))
  params = jax.eval_shape(f.init, jax.random.PRNGKey(0), tokens)
  gflops = flops.jaxpr_matmul_flops(lambda p, t: f.apply(p, None, t), params, tokens) / 1e9
  m = 64 * 64  # The docstring's arithmetic: (8 + 4w) M D^2 + 4 M^2 D per block, the embedding, the head.
  expected = (layers * ((8 + 4 * w) * m * d * d + 4 * m * m * d) + 2 * m * c * d + 2 * d * 1000) / 1e9
  assert gflops == pytest.approx(expected, rel=1e-6)
  assert gflops == pytest.approx(707.2, rel=0.03)  # The Perceiver's compute.


@pytest.mark.parametrize("arg", ["resnet", "vit", "transformer"])
def test_digits_baselines_build(arg, config_loader):
  count, shape = abstract_model(config_loader("digits", arg), batch=3)
  assert shape == (3, 10)
  assert 10_000 < count < 2_000_000


@pytest.mark.parametrize("variant", ["resnet50", "vit_b16", "transformer64"])
def test_imagenet_baseline_and_runlocal_combine_in_either_order(variant, config_loader):
  a = config_loader("imagenet", f"{variant},runlocal,permuted")
  b = config_loader("imagenet", f"runlocal,permuted,{variant}")
  a.config_arg = b.config_arg = ""
  assert a.to_dict() == b.to_dict()
  assert a.input.permutation == "fixed"
  count, shape = abstract_model(a)
  assert shape == (2, 1000)
  assert count < 500_000  # runlocal shrinks the baseline too.


def numpy_variables(model, images):
  """Random parameters and Haiku state for `model`, drawn with numpy: compiling the initialisers' random
  number generation would take most of this file's time on 2 cores. Every head gets random weights, not
  zeros (which would make every logit 0), and every BatchNorm statistic is 1."""
  params, state = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, is_training=True), images)
  rng = np.random.default_rng(0)
  fan_in = lambda shape: int(np.prod(shape[:-1])) if len(shape) > 1 else 1
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(p.dtype) / np.sqrt(fan_in(p.shape)), params)
  return params, jax.tree.map(lambda s: np.ones(s.shape, s.dtype), state)


def logits_fn(config):
  model = build.make_model(config)
  return jax.jit(lambda p, s, x: model.apply(p, s, None, x, is_training=False)[0])


# Same parameters, raw vs fixed-permuted pixels: order-blind models give the same logits, grid models do not.
@pytest.mark.parametrize(
  "arg, invariant",
  [("", True), ("transformer", True), ("resnet", False), ("vit", False)],
)
def test_permuted_pixels_change_only_grid_models(arg, invariant, config_loader):
  raw = config_loader("digits", arg)
  images = np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype(np.float32)
  params, state = numpy_variables(build.make_model(raw), images)
  logits_raw = logits_fn(raw)(params, state, images)
  logits_permuted = logits_fn(config_loader("digits", f"{arg},permuted"))(params, state, images)
  scale = float(jnp.max(jnp.abs(logits_raw)))
  assert float(jnp.std(logits_raw)) > 0.01 * scale > 0
  if invariant:
    np.testing.assert_allclose(logits_permuted, logits_raw, rtol=1e-5, atol=1e-5 * scale)
  else:
    assert float(jnp.max(jnp.abs(logits_permuted - logits_raw))) > 0.01 * scale


def test_patchify_then_linear_is_a_strided_convolution():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 12, 3)).astype(np.float32)
  kernel = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)  # [p, p, C, D]
  by_patches = baselines.patchify(images, 4) @ kernel.reshape(4 * 4 * 3, 5)  # [B, T, D]
  by_conv = lax.conv_general_dilated(
    images, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )  # [B, H/p, W/p, D]
  np.testing.assert_allclose(by_patches, by_conv.reshape(2, 2 * 3, 5), rtol=1e-5, atol=1e-4)


def test_resnet_batchnorm_statistics_move_only_in_training(config_loader):
  model = build.make_model(config_loader("digits", "resnet"))
  images = np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype(np.float32)
  params, state = numpy_variables(model, images)
  new_state = jax.jit(
    lambda p, s, x, training: model.apply(p, s, None, x, is_training=training)[1], static_argnums=3
  )
  changed = lambda new: any(
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True)
  )
  assert changed(new_state(params, state, images, True))
  assert not changed(new_state(params, state, images, False))


@pytest.mark.parametrize(
  "cls, kwargs, field",
  [
    (baselines.ViT, dict(grid_shape=(8, 8), patch_size=3), "patch_size"),
    (baselines.ViT, dict(grid_shape=(8, 8), patch_size=2, width=30, num_heads=4), "num_heads"),
    (baselines.ViT, dict(grid_shape=(8, 8), patch_size=2, pool="cls"), "pool"),
    (baselines.ResNet, dict(grid_shape=(8, 8), blocks_per_group=(1, 1, 1)), "blocks_per_group"),
    (baselines.ResNet, dict(grid_shape=(8, 8), channels_per_group=(6, 8, 8, 8)), "channels_per_group"),
    (baselines.ResNet, dict(grid_shape=(8, 8), initial_stride=0), "initial_stride"),
    (baselines.Transformer, dict(width=30, num_heads=4), "num_heads"),
    (baselines.Transformer, dict(num_layers=0), "num_layers"),
  ],
)
def test_bad_sizes_name_the_field(cls, kwargs, field):
  f = hk.transform_with_state(lambda t: cls(num_classes=10, **kwargs)(t, is_training=False))
  with pytest.raises(ValueError, match=field):
    f.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 5)))


@pytest.mark.parametrize("cls, kwargs", [(baselines.ViT, dict(patch_size=2)), (baselines.ResNet, {})])
def test_grid_models_reject_tokens_that_do_not_fill_the_grid(cls, kwargs):
  f = hk.transform_with_state(
    lambda t: cls(num_classes=10, grid_shape=(8, 8), **kwargs)(t, is_training=False)
  )
  with pytest.raises(ValueError, match="grid_shape"):
    f.init(jax.random.PRNGKey(0), jnp.zeros((1, 60, 5)))


def test_a_stored_resnet50_run_builds_the_resnet_with_its_own_parameter_names(config_loader):
  config = config_loader("digits", "resnet")
  new = abstract_params(config)
  config.model_name = "resnet50"  # The name digits' ResNet-10 runs were once stored under.
  old = abstract_params(config)
  assert all(k.startswith("resnet50/") for k in old) and all(k.startswith("resnet/") for k in new)
  assert {k.replace("resnet50/", "resnet/", 1): v for k, v in old.items()} == new


def test_baselines_are_registered():
  assert models.MODELS["resnet"] is baselines.ResNet
  assert models.MODELS["vit"] is baselines.ViT
  assert models.MODELS["transformer"] is baselines.Transformer


@pytest.mark.parametrize(
  "cls,kwargs",
  [
    (baselines.Transformer, dict(width=16, num_layers=2, num_heads=2)),
    (baselines.ViT, dict(grid_shape=(4, 4), patch_size=2, width=16, num_layers=2, num_heads=2)),
  ],
)
def test_rematerialised_and_chunked_blocks_give_the_same_logits_and_gradients(cls, kwargs):
  tokens = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 5))
  model = lambda remat, chunk: hk.transform(
    lambda x: cls(num_classes=3, remat=remat, attention_chunk_size=chunk, **kwargs)(x, is_training=True)
  )
  params = model(False, None).init(jax.random.PRNGKey(1), tokens)
  # The head starts at zero: random weights everywhere, so the gradients reach every block.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(
    tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
  )
  outputs = []
  for remat, chunk in ((False, None), (True, None), (True, 3)):  # 3: chunks that do not divide the tokens.
    run = lambda p, remat=remat, chunk=chunk: model(remat, chunk).apply(p, None, tokens)
    loss = lambda p, run=run: jnp.sum(jnp.sin(run(p)))
    outputs.append(jax.value_and_grad(loss)(params))
    jaxpr = str(jax.make_jaxpr(loss)(params))
    assert ("remat" in jaxpr or "checkpoint" in jaxpr) is remat
    assert ("scan" in jaxpr) is (chunk is not None)
  for value, grads in outputs[1:]:
    np.testing.assert_allclose(value, outputs[0][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(outputs[0][1]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
