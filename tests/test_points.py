"""Point clouds: the front end (order-blind, masks, the paper's bands), the preprocessing, `shapes`."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from perceiver_jax import data
from perceiver_jax.data import points, shapes, shares
from perceiver_jax.front_ends.points import PointsFrontEnd, grid_order
from perceiver_jax.models import position_encoding as pe
from perceiver_jax.training import build


@pytest.fixture(scope="module")
def tiny():
  """A tiny Perceiver on 32-point clouds with 2 extra channels per point, its parameters."""
  config = load_config(
    "shapes",
    "runlocal,num_latents=8,latent_channels=16,num_cross_attends=1,num_latent_transformers=1,"
    "num_self_attends_per_block=1,num_self_heads=2,num_points=32,point_channels=2,num_bands=6",
  )
  model = build.make_model(config)
  x = build.dummy_inputs(config, 2)
  params, state = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, is_training=False))(x)
  params = _randomised(params)

  @jax.jit
  def logits(clouds, mask=None):
    return model.apply(params, state, None, clouds, is_training=False, input_mask=mask)[0]

  return config, logits


def _randomised(params):
  """Every parameter moved by noise: the head starts at zero, and zero logits would hide any difference."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)])


def _clouds(n, p, channels=5, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, p, channels)).astype(np.float32)


def test_logits_ignore_the_order_of_the_points(tiny):
  _, logits = tiny
  clouds = _clouds(3, 32)
  perm = np.random.default_rng(1).permutation(32)
  want = logits(clouds)
  np.testing.assert_allclose(logits(clouds[:, perm]), want, rtol=1e-5, atol=1e-5)
  # Not vacuous: moving one point changes the answer.
  moved = clouds.copy()
  moved[:, 0, :3] *= -0.5
  assert float(jnp.max(jnp.abs(logits(moved) - want))) > 1e-4


def test_a_cloud_padded_with_masked_points_equals_the_unpadded_cloud(tiny):
  config, logits = tiny
  # 20 real points, padded to the batch's 32 with points of another cloud, at shuffled places.
  real = _clouds(2, 20, seed=2)
  pad = 5 * _clouds(2, 12, seed=3)
  padded = np.concatenate([real, pad], axis=1)
  mask = np.arange(32) < 20
  perm = np.random.default_rng(4).permutation(32)
  padded, mask = padded[:, perm], np.broadcast_to(mask[perm], (2, 32))
  # The unpadded cloud: the same 20 points in a model built for 20-point clouds (same parameters).
  config20 = config.copy_and_resolve_references()
  config20.dataset.num_points = 20
  model20 = build.make_model(config20)
  init = jax.jit(lambda x: model20.init(jax.random.PRNGKey(0), x, is_training=False))
  params, state = init(build.dummy_inputs(config20, 2))
  params = _randomised(params)
  want = model20.apply(params, state, None, real, is_training=False)[0]
  np.testing.assert_allclose(logits(padded, mask), want, rtol=1e-5, atol=1e-5)
  # Not vacuous: unmasked, the padding changes the answer.
  assert float(jnp.max(jnp.abs(logits(padded, np.ones_like(mask)) - want))) > 1e-3


def test_the_papers_maximum_frequency_1120_is_max_resolution_2240():
  """Bands run from 1 to max_resolution / 2: ImageNet's 224 tops out at 112, ModelNet40's 2240 at 1120."""
  xyz = np.random.default_rng(0).uniform(-1, 1, (7, 3)).astype(np.float64)
  f = hk.transform(lambda c: PointsFrontEnd((7, 3), num_bands=64, max_resolution=2240)(c[None])[0])
  tokens = np.asarray(f.apply(None, None, jnp.asarray(xyz, jnp.float32)))[0]  # [7, 387]
  assert tokens.shape == (7, pe.num_fourier_channels(3, 64)) == (7, 387)
  k = 64
  for axis in range(3):  # Sines axis-major: the last band of an axis is its highest frequency.
    top, first = tokens[:, axis * k + k - 1], tokens[:, axis * k]
    np.testing.assert_allclose(top, np.sin(np.pi * 1120 * xyz[:, axis]), atol=3e-3)
    np.testing.assert_allclose(first, np.sin(np.pi * 1.0 * xyz[:, axis]), atol=1e-5)
  np.testing.assert_allclose(tokens[:, -3:], xyz, atol=1e-6)  # Then the raw xyz, once.


def test_grid_layout_is_one_fixed_order_with_empty_cells():
  order = grid_order(10, (3, 4), seed=5)
  assert sorted(order[:10]) == list(range(10)) and list(order[10:]) == [-1, -1]
  np.testing.assert_array_equal(order, grid_order(10, (3, 4), seed=5))
  f = hk.transform(
    lambda c, m: PointsFrontEnd((10, 3), position_encoding="none", grid_shape=(3, 4), permutation_seed=5)(
      c, input_mask=m
    )
  )
  clouds = _clouds(2, 10, channels=3)
  mask = np.ones((2, 10), bool)
  mask[1, 3] = False
  cells, cell_mask = f.apply(None, None, clouds, mask)
  assert cell_mask is None
  want = np.concatenate([clouds[:, order[:10]], np.zeros((2, 2, 3), np.float32)], axis=1)
  want[1, list(order).index(3)] = 0.0  # A masked point leaves its cell empty.
  np.testing.assert_array_equal(np.asarray(cells), want)


def test_preprocessing_seeded_per_example_and_unit_cube():
  clouds = 3.0 + 2.0 * _clouds(5, 64, channels=3)
  eval_clouds = points.normalize(clouds)
  np.testing.assert_allclose(eval_clouds.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.abs(eval_clouds).max(axis=(1, 2)), 1.0, atol=1e-6)
  a = points.augment(clouds[0], np.random.default_rng([0, 1, 7]), (0.99, 1.01))
  b = points.augment(clouds[0], np.random.default_rng([0, 1, 7]), (0.99, 1.01))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a.mean(axis=0), 0.0, atol=1e-5)
  assert np.abs(a).max() == pytest.approx(1.0)
  # Per-point scales within 1% of the deterministic part, not a copy of it.
  diff = np.abs(a - eval_clouds[0])
  assert 1e-4 < diff.max() < 0.03


def test_shapes_batches_resume_exactly_and_count_eval_examples_once():
  config = load_config("shapes", "num_train_examples=40,num_eval_examples=25,num_points=16")
  config.train.global_batch_size, config.train.eval_batch_size = 8, 10
  from_zero = data.train_batches(config)
  first = [next(from_zero) for _ in range(7)]
  resumed = next(data.train_batches(config, start_step=6))
  np.testing.assert_array_equal(resumed["inputs"], first[6]["inputs"])
  np.testing.assert_array_equal(resumed["label"], first[6]["label"])
  assert first[0]["inputs"].shape == (8, 16, 3) and first[0]["inputs"].dtype == np.float32
  batches = list(data.eval_batches(config))
  assert len(batches) == 3 and sum(int(b["eval_mask"].sum()) for b in batches) == 25
  eval_clouds, eval_labels = shapes._arrays(config, "eval")
  got = np.concatenate([b["label"][b["eval_mask"]] for b in batches])
  np.testing.assert_array_equal(got, eval_labels)
  assert sorted(set(eval_labels.tolist())) == list(range(10))
  assert shapes.CLASSES[:5] == ("sphere", "cube", "cylinder", "cone", "torus")
  # Every class is a different surface: the clouds of two seeds differ, of one seed agree.
  again = shapes._split("eval", 25, 16, 0)[0]
  np.testing.assert_array_equal(again, eval_clouds)
  assert not np.allclose(shapes._split("eval", 25, 16, 1)[0], eval_clouds)


def test_each_process_builds_its_own_share_of_the_same_global_batches(monkeypatch):
  config = load_config("shapes", "num_train_examples=40,num_eval_examples=25,num_points=16")
  config.train.global_batch_size, config.train.eval_batch_size = 8, 10
  whole_train = next(data.train_batches(config, start_step=4))
  whole_eval = list(data.eval_batches(config))
  shares_train, shares_eval = [], []
  monkeypatch.setattr(shares.jax, "process_count", lambda: 2)
  for index in (0, 1):
    monkeypatch.setattr(shares.jax, "process_index", lambda index=index: index)
    shares_train.append(next(data.train_batches(config, start_step=4)))
    shares_eval.append(list(data.eval_batches(config)))
  for key in ("inputs", "label"):  # Per-example seeds by global position: the same scales on any split.
    np.testing.assert_array_equal(np.concatenate([s[key] for s in shares_train]), whole_train[key])
  assert len(shares_eval[0]) == len(shares_eval[1]) == len(whole_eval)
  for i, batch in enumerate(whole_eval):
    for key in ("inputs", "label", "eval_mask"):
      np.testing.assert_array_equal(np.concatenate([s[i][key] for s in shares_eval]), batch[key])


@pytest.mark.slow
def test_a_tiny_shapes_run_learns_and_is_drawn_and_tabled(tmp_path):
  """A miniature of the default on the five base shapes (chance 20%), then its pictures and Table 4."""
  from perceiver_jax.tools import tables, visualize_points
  from perceiver_jax.training import train

  config = load_config(
    "shapes",
    "num_points=128,dataset.num_classes=5,model.num_classes=5,num_train_examples=1000,num_eval_examples=200,"
    "num_bands=8,max_resolution=32,"
    "num_latents=16,latent_channels=32,num_cross_attends=1,num_latent_transformers=1,num_self_attends_per_block=2,"
    "num_steps=100,warmup_steps=10,eval_every=100,log_every=50,checkpoint.every=100,eval_batch_size=200",
  )
  config.train.global_batch_size = 32
  results = train.train_and_evaluate(config, str(tmp_path), tensorboard=False)
  assert results["eval"]["count"] == 200
  assert results["eval"]["top1"] > 0.4  # Measured: 0.55 (chance 0.2); 0.67 after 200 steps.

  index = visualize_points.visualize_run(train.load_run(str(tmp_path)), str(tmp_path / "v"), 2, 1)
  text = open(index).read()
  assert "![clouds](clouds.png)" in text and (tmp_path / "v" / "attention_1.png").stat().st_size > 5000

  markdown = tables.write_report(tables.find_runs([str(tmp_path)]), str(tmp_path / "tables"))
  assert "Table 4: point clouds" in markdown and "Table 1" not in markdown
  perceiver = next(line for line in markdown.splitlines() if line.startswith("| Perceiver |"))
  assert f"{100 * results['eval']['top1']:.1f}" in perceiver and "85.7" in perceiver
