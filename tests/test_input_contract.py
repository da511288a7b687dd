"""The input contract: a new input type is a front end and a data source, nothing in the trainer.

A toy 1-D modality is plugged in through the two registries only (front_ends.FRONT_ENDS, data.SOURCES):
variable-length sequences padded to a fixed length with an `input_mask`, where the padding is drawn to
mislead (it looks like real tokens of another class). The real `train_and_evaluate` learns it, and the
padding, whatever it holds, does not change the logits.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from perceiver_jax import data, front_ends
from perceiver_jax.models import position_encoding as pe
from perceiver_jax.tools import flops
from perceiver_jax.training import build, train

NAME = "toy_sequence"
MAX_LENGTH, CHANNELS, CLASSES = 16, 4, 4
NUM_TRAIN, NUM_EVAL = 2048, 200


class SequenceFrontEnd(hk.Module):
  """Sequences [B, M, C] -> tokens [B, M, C + P]: the values, then Fourier features of the position."""

  def __init__(self, input_shape, num_bands: int = 4, name=None):
    super().__init__(name=name)
    self.length, self.num_bands = input_shape[0], num_bands

  def __call__(self, inputs, *, input_mask=None, example_keys=None):
    positions = np.linspace(-1.0, 1.0, self.length, dtype=np.float32)[:, None]  # [M, 1]
    pos = pe.fourier_features(positions, self.num_bands, self.length)  # [M, P]
    pos = jnp.broadcast_to(pos, (inputs.shape[0], *pos.shape))
    return jnp.concatenate([inputs, pos], axis=-1), input_mask


def sequences(seed: int, n: int, rng_noise: int = 0):
  """n examples: the label is the channel raised in the real tokens; the padding raises another one.

  Returns (inputs float32 [n, M, C], input_mask bool [n, M], labels int32 [n]).
  """
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, n)
  decoys = (labels + rng.integers(1, CLASSES, n)) % CLASSES  # Never the label.
  lengths = rng.integers(2, MAX_LENGTH // 2 + 1, n)  # Padding is at least half of every sequence.
  mask = np.arange(MAX_LENGTH) < lengths[:, None]  # [n, M]
  raised = np.where(mask, labels[:, None], decoys[:, None])  # [n, M]: the channel each token raises
  noise = np.random.default_rng([seed, rng_noise]).normal(0.0, 0.5, (n, MAX_LENGTH, CHANNELS))
  inputs = noise + 1.5 * np.eye(CHANNELS)[raised]
  return inputs.astype(np.float32), mask, labels.astype(np.int32)


class ToySequences:
  """The data source: fixed train and eval sets; the batch of step s drawn from (seed, s)."""

  @staticmethod
  def num_examples(config, split):
    return NUM_TRAIN if split == "train" else NUM_EVAL

  @staticmethod
  def train_batches(config, start_step=0):
    inputs, mask, labels = sequences(1, NUM_TRAIN)
    step = start_step
    while True:
      index = np.random.default_rng([config.seed, step]).choice(NUM_TRAIN, config.train.global_batch_size)
      yield {"inputs": inputs[index], "input_mask": mask[index], "label": labels[index]}
      step += 1

  @staticmethod
  def eval_batches(config):
    inputs, mask, labels = sequences(2, NUM_EVAL)
    size = config.train.eval_batch_size
    for start in range(0, NUM_EVAL, size):
      index = np.arange(start, start + size)
      real = index < NUM_EVAL
      index = np.minimum(index, NUM_EVAL - 1)
      yield {"inputs": inputs[index], "input_mask": mask[index], "label": labels[index], "eval_mask": real}


@pytest.fixture
def toy(monkeypatch, config_loader):
  """A runlocal-size Perceiver config on the toy modality, with both registered."""
  monkeypatch.setitem(front_ends.FRONT_ENDS, NAME, SequenceFrontEnd)
  monkeypatch.setitem(data.SOURCES, NAME, lambda: ToySequences)
  config = config_loader("digits", "runlocal")
  config.input = ml_collections.ConfigDict(dict(front_end=NAME, num_bands=4))
  config.dataset = ml_collections.ConfigDict(
    dict(
      name=NAME,
      inputs=dict(shape=(MAX_LENGTH, CHANNELS), dtype="float32", masked=True),  # The batch spec's.
      num_classes=CLASSES,
      num_train_examples=None,
    )
  )
  config.model.update(
    num_classes=CLASSES,
    num_latents=8,
    latent_channels=32,
    num_cross_attends=1,
    num_latent_transformers=1,
    num_self_attends_per_block=1,
  )
  config.train.update(num_steps=100, log_every=50, eval_every=100, eval_batch_size=64)
  config.optimizer.warmup_steps = 10
  config.checkpoint.every = 100
  return config


@pytest.mark.slow
def test_toy_sequence_modality_trains_through_the_registries_and_ignores_padding(toy, tmp_path):
  tokens = CHANNELS + pe.num_fourier_channels(1, 4)
  assert build.token_shape(toy) == (MAX_LENGTH, tokens)  # The trainer's tools ask the front end.
  assert flops.model_stats(toy)["gflops"] * 1e9 == flops.perceiver_forward_flops(
    toy.model, MAX_LENGTH, tokens
  )

  results = train.train_and_evaluate(toy, str(tmp_path), tensorboard=False)
  assert results["eval"]["count"] == NUM_EVAL  # The padded last eval batch counted its real examples only.
  # Chance is 1/4; read without the mask, the decoy channel is raised by at least as many tokens.
  assert results["eval"]["top1"] > 0.8

  run = train.load_run(str(tmp_path))
  model = build.make_model(run.config)
  inputs, mask, _ = sequences(2, 32)
  other, _, _ = sequences(2, 32, rng_noise=1)  # Other values everywhere ...
  refilled = np.where(mask[..., None], inputs, 10 * other)  # ... and, where padding, large ones.

  @jax.jit
  def logits(x, m):
    return model.apply(run.state.params, run.state.state, None, x, is_training=False, input_mask=m)[0]

  want = logits(inputs, mask)
  np.testing.assert_allclose(logits(refilled, mask), want, rtol=1e-5, atol=1e-5)
  # Not vacuous: unmasked, the padding changes the answer.
  assert float(jnp.max(jnp.abs(logits(refilled, np.ones_like(mask)) - want))) > 0.1


def test_a_model_that_cannot_mask_refuses_an_input_mask(toy):
  toy.model_name = "transformer"
  toy.model = ml_collections.ConfigDict(dict(num_classes=CLASSES, width=16, num_layers=1, num_heads=2))
  model = build.make_model(toy)
  x = build.dummy_inputs(toy, 2)
  mask = jnp.ones((2, MAX_LENGTH), bool)
  jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, is_training=True))  # Unmasked: fine.
  with pytest.raises(ValueError, match="model_name='transformer' cannot mask its inputs"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, is_training=True, input_mask=mask))


def test_image_mask_follows_its_pixel_through_the_permutation(config_loader):
  config = config_loader("digits", "permuted_random")
  images = jax.random.uniform(jax.random.PRNGKey(0), (3, 8, 8, 1))
  mask = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (3, 8, 8))
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  f = hk.transform(lambda x, m, k: build.front_end(config)(x, input_mask=m, example_keys=k))
  tokens, token_mask = jax.jit(f.apply)(None, None, images, mask, keys)
  # The pixel value is the token's first channel: a token is masked exactly when its pixel is.
  pixels = np.asarray(images).reshape(3, 64)
  order = np.abs(np.asarray(tokens)[:, :, :1] - pixels[:, None, :]).argmin(-1)  # [B, M]: pixel of token
  assert not np.array_equal(order, np.broadcast_to(np.arange(64), (3, 64)))  # Really permuted.
  np.testing.assert_array_equal(
    np.asarray(token_mask), np.take_along_axis(np.asarray(mask).reshape(3, 64), order, 1)
  )
