"""Sound pictures: what they draw is the model's cross-attention, a distribution over the clip's real tokens.

The runs are the tiny sounds model, initialised (train.Run of its init state, as train.load_run returns a
checkpoint's): training it first would cost more compile time than the whole check, and the weights are read
the same way from any parameters.
"""

import jax
import numpy as np
import pytest
from conftest import load_config
from matplotlib import image as mpimg

from perceiver_jax.front_ends import audio
from perceiver_jax.tools import visualize_audio
from perceiver_jax.training import build, optim, run_files, train

TINY = "runlocal,num_latents=8,latent_channels=16,num_self_attends_per_block=1,num_self_heads=2"
NUM_CLIPS = 2


def tiny_config(variant):
  config = load_config("sounds", f"{variant},{TINY}")
  config.dataset.num_eval_examples = 8
  config.train.update(num_steps=2, log_every=2, eval_every=2, eval_batch_size=8)
  config.checkpoint.every = 2
  return config


def initialised_run(config):
  model = build.make_model(config)
  optimizer, _ = optim.make_optimizer(config, 1, 1)
  # One compile, not an op-by-op initialisation (hundreds of tiny compiles).
  return train.Run(config, jax.jit(lambda: train.init_state(config, model, optimizer))(), 0)


def token_mask(config, masks):
  """The front end's token mask [B, T] (audio) or [B, T, F] (mel) of sample masks [B, S], by its rule."""
  i = config.input
  if i.front_end == "audio":
    return masks.reshape(masks.shape[0], -1, i.samples_per_patch).any(-1)
  frames = 1 + (masks.shape[1] - i.frame_length) // i.frame_step
  real = masks[:, i.frame_step * np.arange(frames)]  # [B, T]: a frame is real when its first sample is.
  return np.repeat(real[:, :, None], i.num_mel_bins, axis=2)


def draw(run, out, monkeypatch):
  """visualize_run into `out`, recording what it computed (attention_weights) and drew (draw_clip)."""
  seen = {"drawn": []}
  compute, draw_clip = visualize_audio.attention_weights, visualize_audio.draw_clip

  def recorded_compute(*args):
    seen["clips"], seen["attention"] = args[3], compute(*args)
    return seen["attention"]

  def recorded_draw(config, clip, mask, spectrogram, weights, latents, title, path):
    seen["drawn"].append((clip, spectrogram, weights, latents))
    return draw_clip(config, clip, mask, spectrogram, weights, latents, title, path)

  monkeypatch.setattr(visualize_audio, "attention_weights", recorded_compute)
  monkeypatch.setattr(visualize_audio, "draw_clip", recorded_draw)
  index_path = visualize_audio.visualize_run(run, str(out), NUM_CLIPS, 2)
  assert index_path == str(out / "index.md")
  index = (out / "index.md").read_text()
  pngs = sorted(p.name for p in out.glob("*.png"))
  assert pngs == [f"attention_{b}.png" for b in range(NUM_CLIPS)]
  for name in pngs:
    assert f"]({name})" in index
    pixels = mpimg.imread(out / name)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20  # Drawn, not blank.
  return index, seen


def check_drawn_weights_are_the_models(run, seen):
  """What is drawn: the model's own weights (return_attention), heads averaged, on the grid, summing to one
  over the clip's tokens, zero on its padding."""
  config, state, clips = run.config, run.state, seen["clips"]
  model = build.make_model(config)

  @jax.jit
  def apply(params, samples, masks, keys):
    kwargs = dict(is_training=False, input_mask=masks, example_keys=keys, return_attention=True)
    return model.apply(params, state.state, None, samples, **kwargs)[0]

  keys = train.eval_example_keys(state.rng, clips.indices)
  logits, weights = apply(state.params, clips.samples, clips.masks, keys)
  np.testing.assert_allclose(seen["attention"].logits, logits, rtol=1e-5, atol=1e-6)
  real = token_mask(config, clips.masks)  # [B, *grid]
  assert (~real).any() and real.reshape(NUM_CLIPS, -1).any(-1).all()  # Some padding to check.
  n = config.model.num_latents
  first_last = [weights[0], weights[-1]]
  assert len(seen["drawn"]) == NUM_CLIPS
  for b, (clip, _, drawn, latents) in enumerate(seen["drawn"]):
    np.testing.assert_array_equal(clip, clips.samples[b])
    assert len(drawn) == len(latents) == 2 and all(len(chosen) == 2 for chosen in latents)
    for got, w in zip(drawn, first_last, strict=True):
      assert got.shape == (n, *real.shape[1:])
      np.testing.assert_allclose(got, np.asarray(w[b]).mean(0).reshape(got.shape), rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(got.reshape(n, -1).sum(-1), 1.0, rtol=1e-5)
      assert np.abs(got * ~real[b]).max() == 0.0  # Nothing on the padded tail.
      assert got.max() > 2.0 / real[b].sum()  # Not uniform: the picture shows something.


@pytest.mark.slow
def test_raw_audio_picture_draws_the_models_attention_over_time(tmp_path, monkeypatch):
  run = initialised_run(tiny_config("raw"))
  index, seen = draw(run, tmp_path / "pictures", monkeypatch)
  assert seen["attention"].spectrogram is None and all(s is None for _, s, _, _ in seen["drawn"])
  check_drawn_weights_are_the_models(run, seen)
  assert "waveform" in index and "patches of 32 samples" in index


@pytest.mark.slow
def test_mel_picture_draws_the_spectrogram_and_the_models_attention(tmp_path, monkeypatch):
  config = tiny_config("mel")
  config.input.update(num_mel_bins=16, frame_step=256)  # 16 frames x 16 bands: 256 tokens.
  run = initialised_run(config)
  index, seen = draw(run, tmp_path / "pictures", monkeypatch)
  check_drawn_weights_are_the_models(run, seen)
  # The spectrogram drawn is the clip's standardised log-mel, computed again here in numpy.
  i, clips = config.input, seen["clips"]
  frames = i.frame_step * np.arange(16)[:, None] + np.arange(i.frame_length)  # [T, W]
  frames = clips.samples[:, frames, 0] * np.hanning(i.frame_length + 1)[:-1]  # [B, T, W]
  bank = audio.mel_filterbank(16, i.frame_length // 2 + 1, i.sample_rate, i.lower_hz, i.sample_rate / 2)
  want = (np.log(np.abs(np.fft.rfft(frames)) ** 2 @ bank + 1e-6) - i.log_mel_mean) / i.log_mel_std
  np.testing.assert_allclose(np.stack([s for _, s, _, _ in seen["drawn"]]), want, atol=2e-3)
  assert "log-mel spectrogram" in index and "16x16 tokens" in index


def test_sound_workdirs_are_told_apart_and_others_refused(config_loader, tmp_path):
  for name, arg in (("sounds", "mel"), ("audioset", ""), ("digits", "")):
    workdir = tmp_path / name
    workdir.mkdir()
    run_files.write_json(workdir / run_files.CONFIG, config_loader(name, arg).to_dict())
    assert visualize_audio.is_audio_workdir(str(workdir)) == (name != "digits")
  config = config_loader("digits", "runlocal")
  assert not visualize_audio.is_audio_run(config)
  with pytest.raises(ValueError, match="front_end"):
    visualize_audio.visualize_run(train.Run(config, None, 0), "/nonexistent", 1)
