"""Attention pictures: the weights are distributions, free when not asked, and un-permute exactly.

Compile time dominates on the CPU, so every test shares one tiny digits run trained for two steps (the
`random` permutation, no latent self-attention, SGD): its parameters serve the property tests too.
"""

import copy
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, load_config

from perceiver_jax import data
from perceiver_jax.tools import visualize
from perceiver_jax.training import build, train

NUM_IMAGES = 4


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """The workdir of a tiny digits run of two steps, trained by train_and_evaluate."""
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  config = load_config(
    "digits", "runlocal,permuted_random,num_latents=8,latent_channels=16,num_self_attends_per_block=0"
  )
  config.optimizer.update(name="sgd", learning_rate=0.1, schedule="constant", warmup_steps=0)
  config.train.update(num_steps=2, log_every=2, eval_every=2)
  config.checkpoint.every = 2
  train.train_and_evaluate(config, workdir, tensorboard=False)
  return workdir


@pytest.fixture(scope="module")
def loaded(trained_run):
  """(run, images, their eval keys, the maps of the unpermuted images) of the trained run."""
  run = train.load_run(trained_run)
  examples = visualize.eval_examples(run.config, NUM_IMAGES)
  keys = train.eval_example_keys(run.state.rng, examples.indices)
  reference = visualize.attention_maps(
    with_permutation(run.config, "none"), run.state.params, run.state.state, examples.images, keys
  )
  return run, examples.images, keys, reference


def with_permutation(config, permutation):
  config = copy.deepcopy(config)
  config.input.permutation = permutation
  config.input.permutation_seed = 3
  return config


@pytest.mark.slow
def test_attention_weights_are_distributions_and_cost_nothing_when_not_asked(loaded):
  run, images, keys, _ = loaded
  config, params, state = run.config, run.state.params, run.state.state
  model = build.make_model(config)

  def asked_fn(p, x, k):
    return model.apply(p, state, None, x, is_training=False, example_keys=k, return_attention=True)[0]

  def plain_fn(p, x, k):
    return model.apply(p, state, None, x, is_training=False, example_keys=k)[0]

  asked = jax.jit(asked_fn).lower(params, images, keys).compile()
  plain = jax.jit(plain_fn).lower(params, images, keys).compile()
  logits, weights = asked(params, images, keys)
  assert len(weights) == config.model.num_cross_attends
  for w in weights:
    w = np.asarray(w)
    assert w.shape == (NUM_IMAGES, config.model.num_cross_heads, 8, 64)  # [B, heads, N, M]
    assert w.min() >= 0.0
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert w.max() > 2.0 / 64  # Not uniform: the permutation tests below compare something.
  # Identical up to float rounding: an attention implementation may normalise at another point when it
  # does not have to hand the weights out.
  np.testing.assert_allclose(np.asarray(plain(params, images, keys)), logits, rtol=1e-5, atol=1e-6)
  # Not asking keeps only the logits, traces no more operations and compiles to no more work.
  jaxpr_plain = jax.make_jaxpr(plain_fn)(params, images, keys)
  jaxpr_asked = jax.make_jaxpr(asked_fn)(params, images, keys)
  assert len(jaxpr_plain.out_avals) == 1
  assert len(jaxpr_asked.out_avals) == 1 + config.model.num_cross_attends
  assert len(jaxpr_plain.eqns) <= len(jaxpr_asked.eqns)
  cost_plain, cost_asked = plain.cost_analysis(), asked.cost_analysis()
  assert cost_plain["flops"] <= cost_asked["flops"]
  assert cost_plain["bytes accessed"] < cost_asked["bytes accessed"]


@pytest.mark.slow
@pytest.mark.parametrize("permutation", ["fixed", "random"])
def test_unpermuted_maps_equal_maps_of_the_unpermuted_image(loaded, permutation):
  run, images, keys, reference = loaded
  permuted = with_permutation(run.config, permutation)
  perm = np.asarray(visualize.token_permutations(permuted, keys))
  assert perm.shape == (NUM_IMAGES, 64)
  assert (perm[0] != np.arange(64)).any()
  if permutation == "random":
    assert (perm[0] != perm[1]).any()  # One permutation per example.
  seen = visualize.attention_maps(permuted, run.state.params, run.state.state, images, keys)
  np.testing.assert_allclose(seen.logits, reference.logits, atol=1e-5)
  for got, want in zip(seen.maps, reference.maps, strict=True):
    assert got.shape == (NUM_IMAGES, 1, 8, 8, 8)  # [B, H, N, h, w]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Left in token order the maps would differ: the un-permutation did real work.
    flat = want.reshape(NUM_IMAGES, 1, 8, 64)
    in_token_order = np.take_along_axis(flat, perm[:, None, None, :], axis=-1)
    assert np.abs(in_token_order - flat).max() > 1e-2


def test_eval_examples_are_first_of_each_class_with_eval_step_keys(config_loader):
  config = config_loader("digits", "runlocal")
  config.train.eval_batch_size = 8  # The examples then span several eval batches.
  batches = list(data.eval_batches(config))
  images = np.concatenate([b["inputs"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  examples = visualize.eval_examples(config, 10)
  assert sorted(examples.labels) == list(range(10))
  first_of_class = [int(np.flatnonzero(labels == c)[0]) for c in range(10)]
  np.testing.assert_array_equal(examples.indices, sorted(first_of_class))
  np.testing.assert_array_equal(examples.images, images[examples.indices])
  assert examples.indices.max() >= 8
  # eval_step's keys: batch i of 8 gets example_keys(fold_in(rng, _EVAL), 8 i, 8).
  rng = jax.random.PRNGKey(5)
  base = jax.random.fold_in(rng, train._EVAL)
  want = np.concatenate([train.example_keys(base, i * 8, 8) for i in range(len(batches))])
  np.testing.assert_array_equal(train.eval_example_keys(rng, examples.indices), want[examples.indices])


def test_focused_latents_picks_the_lowest_entropy_maps():
  maps = np.full((2, 1, 4, 2, 2), 0.25)
  maps[:, :, 2] = [[1.0, 0.0], [0.0, 0.0]]  # One-hot: the most focused.
  maps[:, :, 0] = [[0.5, 0.5], [0.0, 0.0]]
  np.testing.assert_array_equal(visualize.focused_latents(maps, 2), [2, 0])


def _script(*args):
  command = [sys.executable, str(ROOT / "scripts" / "visualize.py"), *args]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def _assert_picture(path):
  from matplotlib import image

  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pixels = image.imread(path)  # [h, w, 4] floats
  assert pixels.shape[0] > 50 and pixels.shape[1] > 50
  assert pixels[..., :3].std() > 0.05  # Not blank.
  assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20  # More than a frame and a fill.


@pytest.mark.slow
def test_script_writes_pictures_and_index(trained_run, tmp_path):
  out = tmp_path / "pictures"
  result = _script(f"--workdir={trained_run}", "--examples=2", "--latents=2", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  index = (out / "index.md").read_text()
  pngs = sorted(p.name for p in out.glob("*.png"))
  # Two examples: each an input and the first and last cross-attends; plus overview and positions.
  assert len(pngs) == 2 * 3 + 2, pngs
  assert "attention_1_cross_attend_2.png" in pngs and "position_features.png" in pngs
  for name in pngs:
    assert f"]({name})" in index
    _assert_picture(out / name)
  assert "permutation `random`" in index


@pytest.mark.slow
def test_unfinished_workdir_is_file_not_found(trained_run, tmp_path):
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text((pathlib.Path(trained_run) / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="checkpoint"):
    visualize.load(str(unfinished))


@pytest.mark.slow
def test_missing_workdir_is_one_clear_message(tmp_path):
  missing = tmp_path / "no_such_run"
  result = _script(f"--workdir={missing}")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert str(missing) in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("visualize: ")
