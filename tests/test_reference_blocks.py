"""Every path of the blocks (CPU kernels, plain TPU/GPU path, folded, chunked) equals the plain reference."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_blocks

from perceiver_jax.models import attention


def _cross(params, latents, inputs, mask, platform, **kwargs):
  def f(latents, inputs):
    with attention.kernels_for(platform):
      block = attention.CrossAttentionBlock(name="block", **kwargs)
      return block(latents, attention.normalize(inputs), input_mask=mask, is_training=False, normalized=True)

  return hk.without_apply_rng(hk.transform(f)).apply(params, latents, inputs) if params else hk.transform(f)


def _loss_and_grads(apply, params, *args):
  return jax.value_and_grad(lambda p, *a: jnp.sum(jnp.sin(apply(p, *a))), argnums=(0, 1, 2))(params, *args)


@pytest.mark.slow
@pytest.mark.parametrize(
  "platform, kwargs",
  [
    ("cpu", dict(num_heads=1)),  # folded projections, keys-major attention, own backward passes
    ("tpu", dict(num_heads=1)),
    ("cpu", dict(num_heads=3, qk_channels=12, v_channels=6, widening_factor=2)),
    ("tpu", dict(num_heads=3, qk_channels=12, v_channels=6, widening_factor=2)),
    ("tpu", dict(num_heads=1, chunk_size=5, fold_projections=False)),
  ],
)
def test_cross_attention_block_equals_the_reference(platform, kwargs):
  rng = np.random.default_rng(0)
  latents = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
  inputs = jnp.asarray(rng.normal(size=(2, 13, 6)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 13)) > 0.3)
  fast = _cross(None, latents, inputs, mask, platform, **kwargs)
  params = fast.init(jax.random.PRNGKey(1), latents, inputs)
  # Non-trivial norms and biases, so folding them into the projections is tested.
  params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("chunk_size", "fold_projections")}

  def ref(p, x, y):
    return reference_blocks.ReferenceCrossAttentionBlock(name="block", **ref_kwargs)(x, y, input_mask=mask)

  ref_apply = hk.without_apply_rng(hk.transform(ref)).apply
  assert jax.tree.structure(hk.transform(ref).init(jax.random.PRNGKey(0), None, latents, inputs)) == (
    jax.tree.structure(params)
  )
  fast_apply = lambda p, x, y: fast.apply(p, None, x, y)
  (want, want_g), (got, got_g) = (
    _loss_and_grads(lambda p, x, y: ref_apply(p, None, x, y), params, latents, inputs),
    _loss_and_grads(fast_apply, params, latents, inputs),
  )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_self_attention_block_equals_the_reference(platform):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 5)) > 0.2).at[:, 0].set(True)

  def fast(x):
    with attention.kernels_for(platform):
      return attention.SelfAttentionBlock(num_heads=2, widening_factor=2, name="block")(
        x, mask=mask, is_training=False
      )

  def ref(x):
    block = reference_blocks.ReferenceSelfAttentionBlock(num_heads=2, widening_factor=2, name="block")
    return block(x, mask=mask)

  fast_t, ref_t = hk.without_apply_rng(hk.transform(fast)), hk.without_apply_rng(hk.transform(ref))
  params = fast_t.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  assert jax.tree.structure(ref_t.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(params)
  grads = [
    jax.value_and_grad(lambda p, x, t=t: jnp.sum(jnp.sin(t.apply(p, x))), argnums=(0, 1))(params, x)
    for t in (fast_t, ref_t)
  ]
  np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads[0][1]), jax.tree.leaves(grads[1][1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
