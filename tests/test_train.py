"""Training: data parallelism is exact, evaluation counts every example once, a short run learns."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

from perceiver_jax import data
from perceiver_jax.training import parallel, train


def step_config(config_loader, arg="permuted_random"):
  config = config_loader("digits", arg)
  # A constant, non-zero learning rate from the first step (with warmup the first update would be zero),
  # and SGD: its update is linear in the gradient, where Adam's first step is about sign(gradient) and
  # would turn rounding noise in near-zero gradients into full-size differences.
  config.optimizer.update(name="sgd", learning_rate=0.1, schedule="constant", warmup_steps=0)
  # Compile time dominates on the CPU: one cross-attend and one self-attention block show the same.
  config.model.update(
    num_latents=8,
    latent_channels=32,
    num_cross_attends=1,
    num_latent_transformers=1,
    num_self_attends_per_block=1,
  )
  return config


def run_steps(config, mesh, num_steps=2):
  trainer = train.Trainer(config, mesh=mesh, total_steps=10)
  state = trainer.init()
  batches = data.train_batches(config)
  metrics = []
  for _ in range(num_steps):
    state, m = trainer.train_step(state, parallel.shard_batch(mesh, next(batches)))
    metrics.append(m)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow
def test_eight_devices_equal_one_device_and_pmap(config_loader):
  config = step_config(config_loader)
  assert jax.device_count() == 8
  state8, metrics8 = run_steps(config, parallel.make_mesh())
  state1, metrics1 = run_steps(config, parallel.make_mesh(jax.devices()[:1]))
  initial = jax.device_get(train.Trainer(config, total_steps=10).init())
  moved = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(initial.params), strict=True)
  )
  assert moved > 1e-3  # The steps did change the parameters, so agreement below is not vacuous.
  assert int(state8.step) == int(state1.step) == 2
  assert_trees_close(state8.params, state1.params, rtol=1e-4, atol=1e-6)
  assert_trees_close(metrics8, metrics1, rtol=1e-4, atol=1e-6)

  # The same per-device function under jax.pmap, the state replicated along a leading device axis.
  trainer = train.Trainer(config, total_steps=10)
  step = jax.pmap(
    functools.partial(
      train.train_step,
      model=trainer.model,
      optimizer=trainer.optimizer,
      num_classes=config.dataset.num_classes,
      label_smoothing=config.train.label_smoothing,
    ),
    axis_name=parallel.AXIS,
  )
  state = jax.tree.map(lambda x: jnp.stack([x] * 8), jax.device_get(trainer.init()))
  batches = data.train_batches(config)
  for _ in range(2):
    batch = jax.tree.map(lambda x: x.reshape(8, -1, *x.shape[1:]), next(batches))
    state, _ = step(state, batch)
  assert_trees_close(
    jax.tree.map(lambda x: x[0], jax.device_get(state.params)), state8.params, rtol=1e-4, atol=1e-6
  )


def test_example_keys_differ_per_example_and_depend_only_on_the_global_index():
  """Per-example keys come from global example indices, not from the device an example lands on.

  That the device count then changes nothing is test_eight_devices_equal_one_device_and_pmap's check
  (its config permutes every example at random).
  """
  keys = train.example_keys(jax.random.PRNGKey(0), 5, 3)
  perms = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, 64))(keys))
  assert len({tuple(p) for p in perms}) == 3
  again = np.asarray(
    jax.vmap(lambda k: jax.random.permutation(k, 64))(train.example_keys(jax.random.PRNGKey(0), 6, 2))
  )
  np.testing.assert_array_equal(perms[1:], again)


@pytest.mark.slow
def test_eval_counts_every_example_exactly_once(config_loader):
  config = step_config(config_loader, "")
  config.train.eval_batch_size = 96  # 359 test images: the last batch is mostly padding.
  trainer = train.Trainer(config, total_steps=10)
  metrics = trainer.evaluate(trainer.init())
  assert metrics["count"] == data.num_examples(config, "eval") == 359
  # A zero-initialised head predicts uniformly: the loss is exactly log(10) on every counted example.
  assert metrics["loss"] == pytest.approx(np.log(10), rel=1e-5)
  labels = np.concatenate([b["label"][b["eval_mask"]] for b in data.eval_batches(config)])
  assert sorted(labels.tolist()) == sorted(data.digits._arrays(config, "eval")[1].tolist())


@pytest.mark.slow
def test_short_digits_run_learns(config_loader, tmp_path):
  config = config_loader("digits", "runlocal")
  config.train.update(num_steps=120, log_every=20, eval_every=120)
  config.optimizer.warmup_steps = 10
  results = train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [m["train_loss"] for m in lines if "train_loss" in m]
  assert losses[-1] < 0.6 * losses[0]
  assert results["eval"]["top1"] > 0.6  # Chance is 0.1.
  assert results["eval"]["count"] == 359
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["eval"]["top1"] == results["eval"]["top1"] and saved["params"] == results["params"] > 0
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_latents"] == 32
  assert list((tmp_path / "tensorboard").iterdir())
  assert not (tmp_path / "plugins").exists()  # profile_steps=0: no trace.


@pytest.mark.parametrize(
  "arg,message",
  [
    ("permuted,typo_variant", "Unknown config variant 'typo_variant'"),
    ("no_such_field=3", "'no_such_field' names no config field"),
    ("num_self_heads=5", "num_self_heads=5 does not divide latent_channels=64"),
    ("num_latents=0", "num_latents=0 must be a positive integer"),
    ("global_batch_size=0", "train.global_batch_size=0 must be a positive integer"),
    ("global_batch_size=60", "train.global_batch_size=60 must be a multiple of the 8 devices"),
    ("learning_rate=-1.0", "optimizer.learning_rate=-1.0 must be positive"),
    ("permutation=shuffled", "input.permutation='shuffled' must be one of"),
    ("optimizer.name=adam", "optimizer.name='adam' must be one of"),
    ("image_size=16", "digits images are 8x8x1, but dataset.image_size=16"),
  ],
)
def test_bad_config_values_name_the_field(config_loader, arg, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config = config_loader("digits", arg)
    trainer = train.Trainer(config)
    trainer.init()
