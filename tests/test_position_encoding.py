"""Position features against a separate numpy computation of the paper's formula."""

import itertools

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver_jax.models import position_encoding as pe


def numpy_fourier(positions, num_bands, max_resolution):
  """Loop-by-loop: for every axis and band sin, then cos; then the raw positions."""
  positions = np.asarray(positions, np.float64)
  d = positions.shape[-1]
  res = [max_resolution] * d if np.isscalar(max_resolution) else list(max_resolution)
  sines, cosines = [], []
  for axis, k in itertools.product(range(d), range(num_bands)):
    freq = 1.0 + k * (res[axis] / 2 - 1.0) / (num_bands - 1) if num_bands > 1 else 1.0
    sines.append(np.sin(freq * np.pi * positions[..., axis]))
    cosines.append(np.cos(freq * np.pi * positions[..., axis]))
  return np.concatenate([np.stack(sines, -1), np.stack(cosines, -1), positions], -1)


@pytest.mark.parametrize("num_bands,max_resolution", [(64, 224), (4, 8), (7, (32, 20))])
def test_fourier_features_match_formula(num_bands, max_resolution):
  rng = np.random.default_rng(0)
  positions = rng.uniform(-1, 1, size=(5, 3, 2)).astype(np.float32)
  got = np.asarray(pe.fourier_features(positions, num_bands, max_resolution))
  want = numpy_fourier(positions, num_bands, max_resolution)
  assert got.shape == (5, 3, 2 * (2 * num_bands + 1))
  # Highest frequency 112: float32 argument rounding bounds the error.
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_imagenet_channels_and_grid():
  positions = pe.grid_positions((224, 224))
  assert positions.shape == (224, 224, 2)
  np.testing.assert_array_equal(positions[0, 0], [-1, -1])
  np.testing.assert_array_equal(positions[-1, -1], [1, 1])
  np.testing.assert_allclose(positions[:, 5, 0], np.linspace(-1, 1, 224), atol=1e-7)
  np.testing.assert_allclose(positions[7, :, 1], np.linspace(-1, 1, 224), atol=1e-7)
  assert pe.fourier_features(positions.reshape(-1, 2), 64, 224).shape == (224 * 224, 258)


def test_fourier_rejects_bad_sizes():
  with pytest.raises(ValueError, match="num_bands=0"):
    pe.fourier_features(np.zeros((1, 2)), 0, 8)


def test_learned_position_encoding_init():
  f = hk.transform(lambda: pe.LearnedPositionEncoding(4096, 128)())
  params = f.init(jax.random.PRNGKey(0))
  table = np.asarray(params["learned_position_encoding"]["pos_embs"])
  assert table.shape == (4096, 128)
  assert np.abs(table).max() <= 2 * 0.02 + 1e-6  # Truncated at two standard deviations.
  assert 0.015 < table.std() < 0.02  # A normal truncated at 2 sigma has std 0.88 sigma.
