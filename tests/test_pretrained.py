"""DeepMind's released Perceiver IO ImageNet classifiers: loading (perceiver_jax.pretrained), the decoder head
and the two image front ends they need, starting a run from them (training/warm_start.py), the scripts.

The tiny official networks and their logits are in tests/data/official_perceiver_io (README.md there).
"""

import hashlib
import json
import os
import pathlib
import pickle
import sys

import jax
import numpy as np
import pytest
from conftest import child_env, load_config, run, train_command

from perceiver_jax import pretrained
from perceiver_jax.training import build, tasks, warm_start

DATA = pathlib.Path(__file__).parent / "data" / "official_perceiver_io"
KINDS = ("fourier", "learned", "conv")
FULL_SIZE = {
  "fourier": "fourier_position_encoding",
  "learned": "learned_position_encoding",
  "conv": "conv_preprocessing",
}


def tiny_args(kind):
  """What the tiny network's shapes cannot tell, from its official constructor arguments."""
  args = json.loads((DATA / "tiny_configs.json").read_text())["networks"][kind]["constructor_args"]["encoder"]
  return dict(
    num_blocks=args["num_blocks"],
    num_self_heads=args["num_self_attend_heads"],
    num_cross_heads=args["num_cross_attend_heads"],
    image_size=16,
  )


# ---------------------------------------------------------------------------------------------------------
# The official logits, through this project's model.


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_official_networks_give_the_official_logits(kind):
  io = np.load(DATA / f"tiny_{kind}_io.npz")
  meta = json.loads((DATA / "tiny_configs.json").read_text())["networks"][kind]
  outputs = []
  for form in ("", "_legacy_flatmapping"):
    path = DATA / f"tiny_{kind}{form}.pkl"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"][path.name]
    config, params, state = pretrained.load_official(str(path), **tiny_args(kind))
    assert config.pretrained_kind == kind
    assert sum(p.size for p in jax.tree.leaves(params)) == meta["total_param_count"]
    assert sum(p.size for p in jax.tree.leaves(state)) == meta["total_state_count"]
    model = build.make_model(config)
    logits, _ = model.apply(params, state, None, io["images"], is_training=False)
    np.testing.assert_allclose(np.asarray(logits), io["logits"], rtol=0, atol=1e-5)
    outputs.append(np.asarray(logits))
  # Nothing in the data is left to chance: the two pickle forms give the same network.
  np.testing.assert_array_equal(outputs[0], outputs[1])
  # A differently wired model (the decoder's query residual flipped) misses the logits by far more than 1e-5.
  config.model.decoder_query_residual = not config.model.decoder_query_residual
  flipped, _ = build.make_model(config).apply(params, state, None, io["images"], is_training=False)
  assert np.abs(np.asarray(flipped) - io["logits"]).max() > 0.1


def test_conv_front_end_keeps_batch_norm_statistics_as_state():
  config, params, state = pretrained.load_official(str(DATA / "tiny_conv.pkl"), **tiny_args("conv"))
  images = np.load(DATA / "tiny_conv_io.npz")["images"]
  model = build.make_model(config)
  _, same = model.apply(params, state, None, images, is_training=False)
  jax.tree.map(np.testing.assert_array_equal, same, state)
  _, trained = model.apply(params, state, None, images, is_training=True)
  ema = "front_end/batchnorm/~/mean_ema"
  assert int(trained[ema]["counter"]) == int(state[ema]["counter"]) + 1
  # Training moves the moving average towards the batch's mean (decay 0.9).
  conv = jax.lax.conv_general_dilated(
    images, params["front_end/conv"]["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  hidden = 0.9 * state[ema]["hidden"] + 0.1 * np.asarray(conv).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(trained[ema]["hidden"], hidden, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The full-size released networks: read from their shapes, mapped one to one.


@pytest.mark.parametrize("kind", KINDS)
def test_full_size_trees_map_one_to_one_onto_the_io_configs(kind):
  network = json.loads((DATA / "full_size_params.json").read_text())["networks"][FULL_SIZE[kind]]
  shapes = {
    part: {m: {n: tuple(leaf["shape"]) for n, leaf in leaves.items()} for m, leaves in network[part].items()}
    for part in ("params", "state")
  }
  params = {
    m: {n: jax.ShapeDtypeStruct(s, np.float32) for n, s in leaves.items()}
    for m, leaves in shapes["params"].items()
  }
  found, config = pretrained.official_config(params)
  assert found == kind
  # What the shapes say is what configs/imagenet.py:io_<kind> builds (the released networks' structure).
  io = load_config("imagenet", f"io_{kind}")
  assert {k: io.model[k] for k in config.model} == config.model.to_dict()
  assert io.input.to_dict() == {**io.input.to_dict(), **config.input.to_dict()}
  plan = pretrained.plan(shapes, config, kind)
  official = {(part, m, n) for part in shapes for m, leaves in shapes[part].items() for n in leaves}
  assert set(plan) == official  # Every official array has a place ...
  targets = [(ours, name) for ours, name, _ in plan.values()]
  assert len(set(targets)) == len(targets)  # ... its own (no two share one) ...
  p, s = jax.eval_shape(
    lambda: build.make_model(config).init(
      jax.random.PRNGKey(0), build.dummy_inputs(config, 1), is_training=True
    )
  )
  ours = {(m, n) for tree in (p, s) for m, leaves in tree.items() for n in leaves}
  assert set(targets) == ours  # ... and nothing of this project's is left without one.
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(p))
  assert count == network["total_param_count"]
  assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(s)) == network["total_state_count"]


def test_fourier_channel_order_maps_the_official_features_onto_ours():
  # The official order [features, y, x, sin, cos] vs this project's [features, sin, cos, y, x], on one grid.
  from perceiver_jax.models import position_encoding as pe

  k, grid = 3, (5, 4)
  positions = pe.grid_positions(grid).reshape(-1, 2)
  ours = np.asarray(pe.fourier_features(positions, k, grid))
  bands = [np.linspace(1, r / 2, k) for r in grid]
  sines = [np.sin(np.pi * positions[:, [a]] * bands[a]) for a in (0, 1)]
  cosines = [np.cos(np.pi * positions[:, [a]] * bands[a]) for a in (0, 1)]
  official = np.concatenate([positions, *sines, *cosines], axis=-1)
  features = np.zeros((len(positions), 2))
  ours_full = np.concatenate([features, ours], -1)
  official_full = np.concatenate([features, official], -1)
  np.testing.assert_allclose(official_full[:, pretrained._fourier_channel_order(2, k)], ours_full, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# What the loader refuses.


class _RunsCommand:
  """Unpickled by plain pickle, this runs a shell command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 4])
def test_a_pickle_that_would_run_a_command_runs_nothing(tmp_path, protocol):
  marker = tmp_path / "ran"
  # After dicts (and arrays: protocol 0 pickles those through _codecs.encode, refused too), not first.
  leaf = np.zeros(2, np.float32) if protocol >= 2 else 0
  tree = {"params": {"perceiver_encoder/~/trainable_position_encoding": {"pos_embs": leaf}}}
  tree["state"] = {"x": {"y": _RunsCommand(marker)}}
  path = tmp_path / "evil.pystate"
  path.write_bytes(pickle.dumps(tree, protocol=protocol))
  with pytest.raises(pretrained.UnsafeCheckpointError, match=r"refused: the pickle names (posix|os)\.system"):
    pretrained.load_official(str(path))
  # The unpickler alone refuses it too, with the opcode scan bypassed.
  with pytest.raises(pretrained.UnsafeCheckpointError, match="system"):
    pretrained._RestrictedUnpickler(path.open("rb")).load()
  assert not marker.exists()
  pickle.loads(path.read_bytes())  # The test's own check that the pickle does run the command.
  assert marker.exists()


def test_other_files_get_one_line_saying_what_was_expected(tmp_path):
  expected = r"Perceiver IO ImageNet checkpoint"
  cases = {
    "npz.pystate": (DATA / "tiny_fourier_io.npz").read_bytes(),
    "truncated.pystate": (DATA / "tiny_fourier.pkl").read_bytes()[:5000],
    "list.pystate": pickle.dumps([1, 2]),
    "other_keys.pystate": pickle.dumps({"params": {}, "opt_state": {}}),
    "other_net.pystate": pickle.dumps(
      {"params": {"resnet/conv": {"w": np.zeros(2, np.float32)}}, "state": {}}
    ),
  }
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(pretrained.CheckpointError, match=expected) as error:
      pretrained.load_official(str(tmp_path / name))
    assert "\n" not in str(error.value), name
  with pytest.raises(FileNotFoundError, match="No checkpoint file"):
    pretrained.load_official(str(tmp_path / "missing.pystate"))


# ---------------------------------------------------------------------------------------------------------
# Starting a run from another's parameters.


def _tree(**shapes):
  return {m: {n: np.full(s, 1.0, np.float32) for n, s in leaves.items()} for m, leaves in shapes.items()}


def test_warm_start_takes_every_array_and_a_new_head_only_for_another_class_count():
  source = _tree(**{"perceiver": {"latents": (4, 8)}, "perceiver/classifier": {"w": (8, 10), "b": (10,)}})
  fresh = {
    "perceiver": {"latents": np.zeros((4, 8), np.float32)},
    "perceiver/classifier": {"w": np.zeros((8, 3), np.float32), "b": np.zeros((3,), np.float32)},
  }
  params, _ = warm_start.warm_start(fresh, {}, source, {}, "perceiver", "W")
  np.testing.assert_array_equal(params["perceiver"]["latents"], 1.0)
  np.testing.assert_array_equal(params["perceiver/classifier"]["w"], np.zeros((8, 3)))
  same, _ = warm_start.warm_start(source, {}, jax.tree.map(lambda x: 2 * x, source), {}, "perceiver", "W")
  np.testing.assert_array_equal(same["perceiver/classifier"]["w"], 2.0)
  with pytest.raises(ValueError, match="only the class projection may change shape"):
    bad = _tree(**{"perceiver": {"latents": (4, 9)}, "perceiver/classifier": {"w": (8, 3), "b": (3,)}})
    warm_start.warm_start(fresh, {}, bad, {}, "perceiver", "W")
  with pytest.raises(ValueError, match="another architecture.*only the source run has: perceiver/extra/w"):
    warm_start.warm_start(fresh, {}, {**source, "perceiver/extra": {"w": np.zeros(1)}}, {}, "perceiver", "W")


def test_evaluation_overrides_only_what_does_not_change_the_model(tmp_path):
  from perceiver_jax.training import run_files, train

  config = load_config("imagenet", "io_fourier,runlocal")
  run_files.write_json(tmp_path / run_files.CONFIG, json.loads(config.to_json_best_effort()))
  with pytest.raises(
    ValueError, match="would change the model or the data.*takes only --config.dataset.data_dir"
  ):
    train.evaluate_run(str(tmp_path), {"model.num_latents": 4})
  with pytest.raises(ValueError, match="--config.dataset.data_dirr would change"):
    train.evaluate_run(str(tmp_path), {"dataset.data_dirr": "D"})


# ---------------------------------------------------------------------------------------------------------
# The io_* configs train from scratch (the conv one with its BatchNorm state across devices).


def test_io_conv_trains_from_scratch_with_its_batch_norm_state():
  from perceiver_jax.training import parallel, train

  config = load_config("imagenet", "io_conv,runlocal")
  config.train.update(global_batch_size=4)
  trainer = train.Trainer(config, mesh=parallel.make_mesh(jax.devices()[:2]), total_steps=2)
  state = trainer.init()
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
    "label": rng.integers(0, 1000, size=4).astype(np.int32),
  }
  before = jax.device_get(state)
  state, metrics = trainer.train_step(state, parallel.shard_batch(trainer.mesh, batch))
  after = jax.device_get(state)
  assert np.isfinite(float(metrics["loss"]))
  assert int(after.state["front_end/batchnorm/~/mean_ema"]["counter"]) == 1
  assert not np.allclose(after.state["front_end/batchnorm/~/var_ema"]["hidden"], 0.0)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before.params, after.params)
  assert moved["front_end/conv"]["w"] and moved["perceiver"]["decoder_query"]


# ---------------------------------------------------------------------------------------------------------
# Convert -> evaluate -> fine-tune through the real scripts, on a fake ImageNet.


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
  from perceiver_jax.data import tfds_input

  root = tmp_path_factory.mktemp("fake_imagenet")
  tfds_input.write_fake_imagenet(str(root / "manual"), train_per_class=2, num_val=5)
  tfds_input.prepare_imagenet(str(root / "manual"), str(root / "data"))
  return root / "data"


@pytest.mark.slow
def test_convert_evaluate_and_fine_tune_through_the_scripts(fake_imagenet, tmp_path, cache_dir):
  env = child_env(cache_dir)
  # The tiny Fourier network with a 1000-class output (random), so that it evaluates on ImageNet's labels.
  official = pretrained.read_checkpoint(str(DATA / "tiny_fourier.pkl"))
  rng = np.random.default_rng(0)
  output = official["params"]["classification_decoder/~/basic_decoder/output"]
  output["w"] = rng.normal(size=(16, 1000)).astype(np.float32) / 4
  output["b"] = rng.normal(size=1000).astype(np.float32)
  wide = tmp_path / "imagenet_fourier_tiny.pystate"
  wide.write_bytes(pickle.dumps(official))
  shape_flags = ["--num_blocks=2", "--num_self_heads=2", "--image_size=16"]
  w = tmp_path / "converted"
  done = run(
    [
      sys.executable,
      "scripts/convert_official_checkpoint.py",
      f"--checkpoint={wide}",
      f"--workdir={w}",
      *shape_flags,
    ],
    env,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout.strip().splitlines()[-1])["kind"] == "fourier"
  stored = json.loads((w / "config.json").read_text())
  assert stored["augment"]["normalize_mean"] == [0.485, 0.456, 0.406]
  assert stored["augment"]["normalize_std"] == [0.229, 0.224, 0.225]

  data_dir = f"--config.dataset.data_dir={fake_imagenet}"
  done = run(
    [
      sys.executable,
      "experiments/evaluate.py",
      f"--workdir={w}",
      data_dir,
      "--config.train.eval_batch_size=4",
    ],
    env,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.loads((w / "eval_results.json").read_text())
  assert results["eval"]["count"] == 5
  # The same images through the converted network in this process: the script evaluated that network.
  from perceiver_jax import data
  from perceiver_jax.training import checkpoint

  config = checkpoint.load_config(str(w))
  config.dataset.data_dir, config.train.eval_batch_size = str(fake_imagenet), 4
  loaded, params, state = pretrained.load_official(str(wide), num_blocks=2, num_self_heads=2, image_size=16)
  losses = []
  for batch in data.eval_batches(config):
    logits, _ = build.make_model(loaded).apply(params, state, None, batch["inputs"], is_training=False)
    loss = tasks.cross_entropy(logits, batch["label"], 1000, 0.0)
    losses += list(np.asarray(loss)[batch["eval_mask"]])
  np.testing.assert_allclose(results["eval"]["loss"], np.mean(losses), rtol=1e-4)

  # Fine-tune the 10-class tiny network on (fake) ImageNet's 1000 classes: a new head, a fresh optimizer.
  w10 = tmp_path / "converted10"
  convert = [sys.executable, "scripts/convert_official_checkpoint.py", f"--workdir={w10}", *shape_flags]
  done = run([*convert, f"--checkpoint={DATA / 'tiny_fourier.pkl'}"], env)
  assert done.returncode == 0, done.stderr[-2000:]
  tuned = tmp_path / "tuned"
  done = run(
    train_command(
      tuned,
      "--config=configs/imagenet.py:io_fourier,runlocal",
      f"--config.train.init_from={w10}",
      data_dir,
      "--config.train.num_steps=2",
      "--config.train.global_batch_size=4",
      "--config.train.eval_batch_size=4",
      "--config.augment.randaugment_layers=0",
    ),
    env,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "with a new head (perceiver/classifier/b, perceiver/classifier/w)" in done.stderr
  from perceiver_jax.training.train import load_run

  tuned_run, source = load_run(str(tuned)), load_run(str(w10))
  assert tuned_run.step == 2
  # The encoder started from the converted weights: after two small steps it is still near them, far nearer
  # than a fresh initialisation is.
  ours, theirs = tuned_run.state.params["perceiver"]["latents"], source.state.params["perceiver"]["latents"]
  assert np.abs(np.asarray(ours) - np.asarray(theirs)).max() < 0.1 * np.abs(np.asarray(theirs)).max()
  assert tuned_run.state.params["perceiver/classifier"]["w"].shape == (16, 1000)
