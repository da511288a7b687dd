"""Sound front ends (front_ends/audio.py): patch layout, masks, the mel filterbank and spectrogram."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_jax.data import sounds, spec
from perceiver_jax.front_ends import audio
from perceiver_jax.models import position_encoding as pe
from perceiver_jax.models.perceiver import Perceiver
from perceiver_jax.training import build, tasks, train


def _apply(fn, *args):
  f = hk.transform(fn)
  params = jax.jit(f.init)(jax.random.PRNGKey(0), *args)
  return jax.jit(f.apply)(params, None, *args)


def test_raw_patch_layout_paper_size():
  # The paper's crop: 61,440 samples at 48 kHz in patches of 128 -> 480 tokens.
  samples = np.random.default_rng(0).normal(size=(1, 61_440, 1)).astype(np.float32)
  tokens, mask = _apply(lambda x: audio.AudioFrontEnd((61_440, 1), 128, num_bands=8)(x), samples)
  assert tokens.shape == (1, 480, 128 + pe.num_fourier_channels(1, 8)) and mask is None
  np.testing.assert_array_equal(tokens[0, 0, :128], samples[0, :128, 0])
  np.testing.assert_array_equal(tokens[0, 7, :128], samples[0, 7 * 128 : 8 * 128, 0])
  # Patch 0 sits at time -1: sines of -pi * bands, cosines of them, then the raw position.
  bands = np.linspace(1.0, 480 / 2, 8)
  want = np.concatenate([np.sin(-np.pi * bands), np.cos(-np.pi * bands), [-1.0]])
  np.testing.assert_allclose(tokens[0, 0, 128:], want, atol=1e-4)
  assert float(tokens[0, -1, -1]) == 1.0


def test_raw_padded_clip_equals_unpadded():
  """A clip of 100 samples in a 256-sample crop (tail garbage, masked) gives the Perceiver the logits of
  its own 7 patches alone (the partial 7th patch zero-filled), whatever the tail holds."""
  rng = np.random.default_rng(1)
  length, crop, p = 100, 256, 16
  clip = rng.normal(size=length).astype(np.float32)
  padded = rng.normal(size=(2, crop, 1)).astype(np.float32)  # Two different tails.
  padded[:, :length, 0] = clip
  mask = np.broadcast_to(np.arange(crop) < length, (2, crop))

  def forward(x, m):
    tokens, token_mask = audio.AudioFrontEnd((crop, 1), p, num_bands=4)(x, input_mask=m)
    model = Perceiver(
      3,
      num_latents=4,
      latent_channels=16,
      num_cross_attends=1,
      num_latent_transformers=1,
      num_self_attends_per_block=1,
      num_self_heads=2,
    )
    real = -(-length // p)
    return (
      model(tokens, input_mask=token_mask, is_training=False),
      model(tokens[:, :real], is_training=False),
      token_mask,
      tokens,
    )

  masked, alone, token_mask, tokens = _apply(forward, padded, mask)
  assert token_mask.sum(axis=1).tolist() == [7, 7]
  np.testing.assert_allclose(masked[0], masked[1], atol=1e-5)
  np.testing.assert_allclose(masked, alone, atol=1e-5)
  np.testing.assert_array_equal(tokens[0, 6, :p], np.pad(clip[96:], (0, 12)))


def test_mel_filterbank_matches_tf_signal():
  tf = pytest.importorskip("tensorflow")
  ours = audio.mel_filterbank(96, 1025, 48_000, 20.0, 24_000.0)
  theirs = tf.signal.linear_to_mel_weight_matrix(96, 1025, 48_000, 20.0, 24_000.0, dtype=tf.float64).numpy()
  assert ours.shape == theirs.shape == (1025, 96)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)  # float32 weights in [0, 1].


def test_mel_paper_inputs_and_spectrogram():
  """The defaults give 50 x 96 = 4,800 tokens for 61,440 samples; a 3 kHz tone peaks in the band whose
  centre is nearest 3 kHz; the log-mel equals tf.signal's stft + the same filterbank (1e-3 in log)."""
  tf = pytest.importorskip("tensorflow")
  t = np.arange(61_440) / 48_000
  x = np.sin(2 * np.pi * 3000 * t).astype(np.float32)[None, :, None]

  def forward(x, keys):
    fe = audio.MelFrontEnd((61_440, 1), num_bands=4)
    return fe(x, example_keys=keys), fe.spectrogram(x[..., 0]), fe(x, example_keys=keys, is_training=True)

  keys = jax.random.split(jax.random.PRNGKey(0), 1)
  (tokens, mask), spec, (augmented, _) = _apply(forward, jnp.asarray(x), keys)
  assert tokens.shape == (1, 4_800, 1 + pe.num_fourier_channels(2, 4)) and mask is None
  edges = np.linspace(audio.hz_to_mel(20.0), audio.hz_to_mel(24_000.0), 98)[1:-1]
  assert int(np.argmax(spec[0, 25])) == int(np.argmin(np.abs(edges - audio.hz_to_mel(3000.0))))
  stft = tf.signal.stft(x[0, :, 0], 2048, 1200, 2048, window_fn=tf.signal.hann_window, pad_end=False)
  power = tf.abs(stft).numpy().astype(np.float64) ** 2
  want = (np.log(power @ audio.mel_filterbank(96, 1025, 48_000, 20.0, 24_000.0) + 1e-6) + 6.0) / 5.0
  assert want.shape == (50, 96)
  np.testing.assert_allclose(spec[0], want, atol=2e-3)
  np.testing.assert_allclose(tokens[0, :, 0].reshape(50, 96), spec[0], atol=1e-6)
  # SpecAugment: training zeroes whole frames and whole bands, and leaves the rest alone.
  changed = np.asarray(augmented[0, :, 0] != tokens[0, :, 0]).reshape(50, 96)
  assert changed.any() and np.all(np.asarray(augmented[0, :, 0]).reshape(50, 96)[changed] == 0)
  np.testing.assert_array_equal(augmented[0, :, 1:], tokens[0, :, 1:])


def test_sounds_batches_follow_the_spec_per_step_per_process_and_eval_once(config_loader, monkeypatch):
  config = config_loader("sounds", "runlocal")
  config.train.global_batch_size, config.train.eval_batch_size, config.dataset.num_eval_examples = 4, 8, 20
  first = [next(sounds.train_batches(config, start_step=s)) for s in (0, 1)]
  spec.check_batch(first[0], spec.batch_spec(config, 4))
  assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])
  jax.tree.map(np.testing.assert_array_equal, next(sounds.train_batches(config, start_step=1)), first[1])
  shares = []
  for process in range(2):  # Two processes' shares of a step are the one-process batch, split.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    shares.append(next(sounds.train_batches(config)))
  jax.tree.map(lambda a, b, c: np.testing.assert_array_equal(np.concatenate([b, c]), a), first[0], *shares)
  monkeypatch.undo()
  evals = list(sounds.eval_batches(config))
  spec.check_batch(evals[0], spec.batch_spec(config, 8, "eval"))
  assert len(evals) == 3 and sum(int(b["eval_mask"].sum()) for b in evals) == 20
  labels, mask = first[0]["label"], first[0]["input_mask"]
  assert set(labels.sum(1).tolist()) <= {1.0, 2.0, 3.0}
  lengths = mask.sum(1)
  assert lengths.min() >= 2048 and np.all(first[0]["inputs"][~mask] == 0)
  assert all(mask[i, : lengths[i]].all() for i in range(4))


@pytest.mark.slow
def test_sounds_mel_trains_to_a_map_well_above_random_scores(config_loader, tmp_path):
  """A tiny Perceiver on log-mel tokens, 60 steps: eval mAP at least 0.2 above random scores' mAP."""
  config = config_loader("sounds", "mel,runlocal")
  config.model.update(num_latents=16, num_cross_attends=1, num_latent_transformers=1)
  config.model.num_self_attends_per_block = 1
  config.input.update(num_mel_bins=16, frame_step=256, max_freq_mask=2)  # 15 frames x 16 bands: 240 tokens.
  config.train.num_steps = config.train.eval_every = 60
  config.optimizer.learning_rate = 1e-2
  result = train.train_and_evaluate(config, str(tmp_path), tensorboard=False)
  labels = np.concatenate([b["label"] for b in sounds.eval_batches(config)])
  chance = tasks.mean_average_precision(np.random.default_rng(0).random(labels.shape), labels)
  assert result["eval"]["count"] == config.dataset.num_eval_examples
  assert result["eval"]["mAP"] > chance + 0.2, (result["eval"]["mAP"], chance)


def test_audioset_config_gives_the_papers_inputs(config_loader):
  """Table 3's inputs: 480 raw-audio patches of 128 samples, 4,800 mel values; the model unshared, 2 x 8."""
  raw, mel = config_loader("audioset"), config_loader("audioset", "mel")
  assert build.token_shape(raw)[0] == 480 and build.token_shape(mel)[0] == 4_800
  assert build.token_shape(raw)[1] == 128 + pe.num_fourier_channels(1, raw.input.num_bands)
  m = raw.model
  assert (m.num_cross_attends, m.num_self_attends_per_block, m.num_classes) == (2, 8, 527)
  assert not (m.share_cross_attends or m.share_latent_transformers) and raw.task == "multi_label"
