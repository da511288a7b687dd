"""The ImageNet recipe beyond the augmentations: dense init, the `official_recipe` schedule, the defaults."""

import importlib.util
import pathlib

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver_jax.models import attention
from perceiver_jax.training import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imagenet_config(arg=None):
  spec = importlib.util.spec_from_file_location("imagenet_config", ROOT / "configs" / "imagenet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("fan_in", [261, 1024])
def test_dense_init_is_variance_scaling_on_fan_in(fan_in):
  # The official code's VarianceScaling(1.0, fan_in, truncated_normal): std exactly 1 / sqrt(fan_in) (a plain
  # TruncatedNormal(1 / sqrt(fan_in)) has 0.88 of it), cut at 2 untruncated stds.
  init = hk.transform(lambda: attention._DenseParams(name="dense")(fan_in, 1024)).init
  params = init(jax.random.PRNGKey(0))["dense"]
  w, b = np.asarray(params["w"]), params["b"]
  assert w.shape == (fan_in, 1024) and not np.any(np.asarray(b))
  assert np.std(w) * np.sqrt(fan_in) == pytest.approx(1.0, abs=0.01)
  assert np.abs(w).max() * np.sqrt(fan_in) <= 2 / 0.87962566103423978 + 1e-5


def test_official_recipe_schedule_is_flat_then_cosine():
  config = imagenet_config("official_recipe")
  assert config.train.num_epochs == 110 and config.optimizer.schedule == "constant_cosine"
  lr = 5e-4 * config.train.global_batch_size / 256
  assert config.optimizer.learning_rate == pytest.approx(lr)
  total = 1000
  schedule = optim.make_schedule(config, steps_per_epoch=10, total_steps=total)
  for step in (0, 250, 499, 500):
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6)
  for step in (600, 750, 900, 1000):
    expected = lr * 0.5 * (1 + np.cos(np.pi * (step - 500) / 500))
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_default_recipe_keeps_the_papers_schedule_and_the_official_augmentation():
  config = imagenet_config()
  assert config.optimizer.learning_rate == 0.004 and config.optimizer.schedule == "step"
  assert tuple(config.optimizer.decay_epochs) == (84, 102, 114) and config.train.num_epochs == 120
  schedule = optim.make_schedule(config, steps_per_epoch=10, total_steps=1200)
  assert [float(schedule(s)) for s in (839, 840, 1020, 1140)] == pytest.approx([4e-3, 4e-4, 4e-5, 4e-6])
  aug = config.augment
  assert (aug.randaugment_layers, aug.randaugment_magnitude) == (4, 5)
  assert (aug.mixup_alpha, aug.cutmix_alpha, aug.crop_min_object_covered) == (0.2, 1.0, 0.1)


def test_an_epoch_is_a_pass_over_the_images_read():
  from perceiver_jax.training import train

  # With MixUp/CutMix a step of 1024 examples reads 2048 images: 1,281,167 / 2048 -> 626 steps per epoch.
  assert train.schedule_length(imagenet_config()) == (626, 120 * 626)
  assert train.schedule_length(imagenet_config("official_recipe")) == (626, 110 * 626)
  unmixed = imagenet_config("mixup_alpha=0.0,cutmix_alpha=0.0")
  assert train.schedule_length(unmixed) == (1252, 120 * 1252)  # One image per example.
