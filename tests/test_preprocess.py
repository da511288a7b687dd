"""The front end: position features stay with their pixels; fixed and random permutations."""

import subprocess
import sys

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver_jax.front_ends import images
from perceiver_jax.training import build


def tokens(config, pixels, keys=None):
  f = hk.transform(lambda x, k: build.front_end(config)(x, example_keys=k)[0])
  return np.asarray(jax.jit(f.apply)(None, None, pixels, keys))


def find_order(permuted, raw):
  """For each permuted token, the index of the raw token it equals (each must match exactly one)."""
  matches = np.abs(permuted[:, :, None] - raw[:, None]).max(-1) < 1e-6  # [B, M, M]
  assert np.all(matches.sum(-1) == 1)
  return matches.argmax(-1)  # [B, M]


@pytest.mark.slow
def test_fixed_permutation_is_the_same_everywhere(config_loader):
  config, raw_config = config_loader("digits", "permuted"), config_loader("digits")
  pixels = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))
  order = find_order(tokens(config, pixels), tokens(raw_config, pixels))
  expected = images.fixed_permutation(64, config.input.permutation_seed)
  assert not np.array_equal(expected, np.arange(64))
  np.testing.assert_array_equal(order, np.broadcast_to(expected, (4, 64)))  # Same for every example.
  other = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1))  # Another batch (train or eval alike).
  np.testing.assert_array_equal(find_order(tokens(config, other), tokens(raw_config, other))[0], expected)
  # Another process (another host, or a restart) draws the very same permutation from the seed.
  code = "from perceiver_jax.front_ends import images; print(images.fixed_permutation(64, 0).tolist())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert eval(out) == expected.tolist()  # noqa: S307 (our own subprocess's list literal)


def test_random_permutation_differs_per_example_and_keeps_features(config_loader):
  config, raw_config = config_loader("digits", "permuted_random"), config_loader("digits")
  pixels = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  order = find_order(tokens(config, pixels, keys), tokens(raw_config, pixels))
  assert len({tuple(row) for row in order}) == 4  # A different permutation for every example.
  np.testing.assert_array_equal(order, np.asarray(images.random_permutations(keys, 64)))
  # The same key gives the same permutation: per-example randomness is reproducible.
  np.testing.assert_array_equal(order, find_order(tokens(config, pixels, keys), tokens(raw_config, pixels)))


def test_position_features_are_those_of_the_grid(config_loader):
  config = config_loader("digits")
  pixels = jax.random.uniform(jax.random.PRNGKey(0), (1, 8, 8, 1))
  out = tokens(config, pixels)[0]  # [64, 1 + 18]
  np.testing.assert_allclose(out[:, 0], np.asarray(pixels).reshape(64))
  raw_positions = out[:, -2:]  # The last d channels are the raw positions, in raster order.
  np.testing.assert_allclose(raw_positions.reshape(8, 8, 2)[0, :, 1], np.linspace(-1, 1, 8), atol=1e-6)
  np.testing.assert_allclose(raw_positions.reshape(8, 8, 2)[:, 0, 0], np.linspace(-1, 1, 8), atol=1e-6)
