"""Video and audio+video (front_ends/video.py, front_ends/multimodal.py's fusion, data/audio_video.py):
patch layout, masks, token order, modality dropout, and the audio+video miniature: train, resume, evaluate."""

import re
import shutil

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_jax.data import audio_video, spec
from perceiver_jax.front_ends import video
from perceiver_jax.models import position_encoding as pe
from perceiver_jax.models.perceiver import Perceiver
from perceiver_jax.tools import visualize_video
from perceiver_jax.training import build, train


def _apply(fn, *args):
  f = hk.transform(fn)
  params = jax.jit(f.init)(jax.random.PRNGKey(0), *args)
  return params, jax.jit(f.apply)(params, None, *args)


def _tiny_perceiver(num_classes=3):
  return Perceiver(
    num_classes,
    num_latents=4,
    latent_channels=16,
    num_cross_attends=1,
    num_latent_transformers=1,
    num_self_attends_per_block=1,
    num_self_heads=2,
  )


def test_video_patch_layout_paper_size():
  # The paper's crop: 32 frames of 224 x 224 in 2 x 8 x 8 patches -> 12,544 tokens of 384 values.
  frames = np.random.default_rng(0).normal(size=(1, 32, 224, 224, 3)).astype(np.float32)
  _, (tokens, mask) = _apply(lambda x: video.VideoFrontEnd(x.shape[1:], (2, 8, 8), num_bands=4)(x), frames)
  assert tokens.shape == (1, 12_544, 384 + pe.num_fourier_channels(3, 4)) and mask is None
  # Token (t', y', x') = (3, 5, 7) holds frames 6-7, rows 40-47, columns 56-63, time-major, then rows.
  index = 3 * 28 * 28 + 5 * 28 + 7
  np.testing.assert_array_equal(tokens[0, index, :384], frames[0, 6:8, 40:48, 56:64].reshape(-1))
  # Its position: t, y, x spaced over [-1, 1] on the 16 x 28 x 28 grid, last three channels.
  np.testing.assert_allclose(
    tokens[0, index, -3:], [-1 + 2 * 3 / 15, -1 + 2 * 5 / 27, -1 + 2 * 7 / 27], atol=1e-6
  )
  bands = np.linspace(1.0, 16 / 2, 4)  # The time axis' bands, up to its resolution 16 / 2.
  np.testing.assert_allclose(tokens[0, 0, 384:388], np.sin(-np.pi * bands), atol=1e-4)
  with pytest.raises(ValueError, match="input.patch_size"):
    hk.transform(lambda: video.VideoFrontEnd((32, 224, 224, 3), (3, 8, 8))).init(None)


def test_video_padded_clip_equals_unpadded():
  """A clip of 5 frames in an 8-frame crop (tail garbage, masked) gives the Perceiver the logits of its own
  3 time-patches alone (the 5th frame's patch zero-filled in its second frame), whatever the tail holds."""
  rng = np.random.default_rng(1)
  length, crop = 5, (8, 4, 4, 3)
  padded = rng.normal(size=(2, *crop)).astype(np.float32)  # Two different tails.
  padded[1, :length] = padded[0, :length]
  mask = np.broadcast_to((np.arange(8) < length)[:, None, None], (2, 8, 4, 4))

  def forward(x, m):
    tokens, token_mask = video.VideoFrontEnd(crop, (2, 2, 2), num_bands=2)(x, input_mask=m)
    model = _tiny_perceiver()
    real = 3 * 2 * 2  # 3 time-patches of 2 x 2 spatial patches, time-major.
    masked = model(tokens, input_mask=token_mask, is_training=False)
    return masked, model(tokens[:, :real], is_training=False), token_mask, tokens

  _, (masked, alone, token_mask, tokens) = _apply(forward, padded, mask)
  assert token_mask.sum(axis=1).tolist() == [12, 12] and bool(token_mask[0, :12].all())
  np.testing.assert_allclose(masked[0], masked[1], atol=1e-5)
  np.testing.assert_allclose(masked, alone, atol=1e-5)
  last = np.concatenate([padded[0, 4:5, :2, :2], np.zeros((1, 2, 2, 3), np.float32)]).reshape(-1)
  np.testing.assert_array_equal(tokens[0, 8, :24], last)  # Frames 4 (real) and 5 (padding, zeroed).


@pytest.fixture(scope="module")
def fused():
  """A tiny Perceiver on the audio+video miniature's batches: config, model, params, state, batch."""
  from conftest import load_config

  config = load_config("sounds", "audio_video,runlocal")
  config.model.update(num_latents=8, latent_channels=16, num_cross_attends=1, num_latent_transformers=1)
  config.model.update(num_self_attends_per_block=1, num_self_heads=2)
  model = build.make_model(config)
  batch = audio_video._batch(config, "train", range(6))
  keys = jax.random.split(jax.random.PRNGKey(3), 6)
  params, state = jax.jit(
    lambda x, m, k: model.init(jax.random.PRNGKey(0), x, input_mask=m, example_keys=k, is_training=True)
  )(batch["inputs"], batch["input_mask"], keys)
  # The head starts at zero (every logit 0): random weights, so that logits can tell inputs apart.
  params = dict(params)
  for name in [n for n in params if n.endswith("classifier")]:
    w = params[name]["w"]
    params[name] = dict(params[name], w=jax.random.normal(jax.random.PRNGKey(1), w.shape, w.dtype))
  return config, model, params, state, batch


def test_fused_tokens_have_the_papers_widths_and_any_order_gives_the_same_logits(fused, config_loader):
  config, model, params, state, batch = fused
  body = {k: v for k, v in params.items() if k != "front_end"}
  front = hk.transform(lambda x, m: build.front_end(config)(x, input_mask=m))
  perceiver = hk.transform(lambda t, m: build.model_module(config)(t, input_mask=m, is_training=False))

  @jax.jit
  def run(x, m):
    tokens, mask = front.apply(params, None, x, m)
    swapped = jnp.concatenate([tokens[:, 128:], tokens[:, :128]], axis=1)  # Video first, with its embedding.
    swapped_mask = jnp.concatenate([mask[:, 128:], mask[:, :128]], axis=1)
    whole = model.apply(params, state, None, x, input_mask=m, is_training=False)[0]
    return (
      tokens,
      whole,
      perceiver.apply(body, None, tokens, mask),
      perceiver.apply(body, None, swapped, swapped_mask),
    )

  tokens, whole, in_order, in_other_order = run(batch["inputs"], batch["input_mask"])
  # Sorted order: audio (128 patches of 32 + 33) then video (128 patches of 96 + 27), 4 video embedding
  # channels, the audio's as many as make it as wide: 62.
  assert tokens.shape == (6, 256, 127) and params["front_end"]["video_embedding"].shape == (4,)
  assert params["front_end"]["audio_embedding"].shape == (62,)
  np.testing.assert_array_equal(
    tokens[:, 128:, 123:], np.broadcast_to(params["front_end"]["video_embedding"], (6, 128, 4))
  )
  np.testing.assert_allclose(in_order, whole, atol=1e-6)
  np.testing.assert_allclose(in_other_order, whole, atol=1e-5)
  assert np.abs(np.asarray(whole)).max() > 1e-3  # Logits that could differ.
  # The paper's model: 12,544 video patches of 384 + 3 (2 x 32 + 1) values + 4, and 480 audio patches.
  paper = config_loader("audioset", "audio_video")
  assert build.token_shape(paper) == (12_544 + 480, 384 + pe.num_fourier_channels(3, 32) + 4)


def test_video_dropout_zeroes_whole_streams_per_example_in_training_only(fused):
  config, _, params, _, batch = fused

  def tokens(x, m, keys, is_training, p):
    cfg = config.copy_and_resolve_references()
    cfg.input.modality_dropout.video = p
    return build.front_end(cfg)(x, input_mask=m, example_keys=keys, is_training=is_training)[0]

  f = hk.transform(tokens)
  many = jax.tree.map(lambda a: np.concatenate([a] * 20), batch)  # 120 examples, 120 keys.
  keys = jax.random.split(jax.random.PRNGKey(5), 120)
  apply = jax.jit(
    lambda x, k, t, p: f.apply(params, None, x, many["input_mask"], k, t, p), static_argnums=(2, 3)
  )
  dropped = apply(many["inputs"], keys, True, 0.5)
  kept = apply(many["inputs"], keys, False, 0.5)
  zero = dict(many["inputs"], video=np.zeros_like(many["inputs"]["video"]))
  blank = apply(zero, keys, False, 0.5)
  is_blank = np.all(np.asarray(dropped[:, 128:]) == np.asarray(blank[:, 128:]), axis=(1, 2))
  is_kept = np.all(np.asarray(dropped[:, 128:]) == np.asarray(kept[:, 128:]), axis=(1, 2))
  assert np.all(is_blank ^ is_kept) and 40 <= is_blank.sum() <= 80  # Whole streams; about half of 120.
  np.testing.assert_array_equal(dropped[:, :128], kept[:, :128])  # The audio untouched.
  again = apply(many["inputs"], jax.random.split(jax.random.PRNGKey(6), 120), True, 0.5)
  assert not np.array_equal(np.asarray(again), np.asarray(dropped))  # Drawn from the examples' keys.
  np.testing.assert_array_equal(apply(many["inputs"], keys, True, 0.0), kept)


def test_audio_video_batches_follow_the_spec_and_masks(fused):
  config, *_ = fused
  batch = next(audio_video.train_batches(config, start_step=2))
  spec.check_batch(batch, spec.batch_spec(config, config.train.global_batch_size))
  frames = batch["input_mask"]["video"][:, :, 0, 0].sum(1)
  samples = batch["input_mask"]["audio"].sum(1)
  np.testing.assert_array_equal(frames, -(-samples // 256))  # 256 samples a frame, the same clip length.
  assert np.all(batch["inputs"]["video"][~batch["input_mask"]["video"]] == 0)
  seen, heard = batch["inputs"]["video"].max(axis=(1, 2, 3, 4)), batch["label"]
  assert heard.sum(1).min() >= 1 and seen.max() > 0.5


@pytest.mark.slow
def test_audio_video_runlocal_trains_resumes_and_evaluates(config_loader, tmp_path, monkeypatch):
  config = config_loader("sounds", "audio_video,runlocal")
  config.model.update(num_latents=8, latent_channels=16, num_cross_attends=1, num_latent_transformers=1)
  config.model.update(num_self_attends_per_block=1, num_self_heads=2)
  config.train.update(global_batch_size=8, num_steps=4, eval_every=4, log_every=2, eval_batch_size=8)
  config.checkpoint.every = 2
  config.dataset.num_eval_examples = 10
  workdir = tmp_path / "run"
  whole = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert whole["eval"]["count"] == 10 and len(whole["eval"]["per_class_ap"]) == 10
  shutil.rmtree(workdir / "checkpoints" / "4")
  monkeypatch.setattr(train.Trainer, "init", lambda self: pytest.fail("started afresh, not resumed"))
  resumed = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert resumed["params_checksum"] == whole["params_checksum"]  # Video dropout's draws resume too.
  evaluated = train.evaluate_run(str(workdir), {"train.eval_batch_size": 16})
  assert evaluated["eval"]["mAP"] == pytest.approx(whole["eval"]["mAP"], rel=1e-5)

  # The pictures: frames with where latents look, and each modality's share of the attention.
  monkeypatch.undo()
  run = train.load_run(str(workdir))
  index = visualize_video.visualize_run(run, str(tmp_path / "pictures"), 2, workdir=str(workdir))
  assert {p.name for p in (tmp_path / "pictures").iterdir()} == {
    "index.md",
    "video_0.png",
    "video_1.png",
    "modalities.png",
  }
  layout, grid = visualize_video.token_layout(run.config)
  assert layout == {"audio": (0, 128), "video": (128, 128)} and grid == (8, 4, 4)
  lines = [line for line in open(index).read().splitlines() if "mean share of a latent's attention" in line]
  assert len(lines) == 1  # One cross-attend: audio's and video's shares of the attention add up to one.
  shares = [float(x) for x in re.findall(r"(?:audio|video) ([0-9.]+)% \(of tokens 50.0%\)", lines[0])]
  assert len(shares) == 2 and sum(shares) == pytest.approx(100.0, abs=0.11)


def _write_clip(path, fps, width, height, count):
  """An MPEG-4 clip whose frame i is grey level 8 i (decoded frames say which source frame they are)."""
  import av

  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for i in range(count):
      image = np.full((height, width, 3), 8 * i, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def test_video_decoding_resamples_to_25_fps_and_the_augmentations_keep_the_clip_together(tmp_path):
  import wave

  from perceiver_jax.data import video_ops

  _write_clip(tmp_path / "wide.mp4", 30, 64, 48, 30)  # 1 s at 30 fps, 4:3.
  frames = video_ops.decode(tmp_path / "wide.mp4", short_side=32)
  assert frames.shape == (25, 32, 43, 3) and frames.dtype == np.uint8
  # Output frame k (time k / 25) shows the last source frame at or before it: floor(k * 30 / 25).
  shown = np.round(frames.reshape(25, -1).mean(1) / 8).astype(int)
  np.testing.assert_array_equal(shown, np.floor(np.arange(25) * 30 / 25 + 1e-9).astype(int))
  _write_clip(tmp_path / "tall.mkv", 24, 32, 48, 12)  # Portrait, 0.5 s at 24 fps, another container.
  assert video_ops.decode(tmp_path / "tall.mkv", short_side=32).shape[1:3] == (48, 32)
  (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
  with wave.open(str(tmp_path / "sound.wav"), "wb") as f:  # Audio only: no video stream.
    f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000), f.writeframes(bytes(1600))
  for name in ("broken.mp4", "sound.wav"):
    with pytest.raises(video_ops.VideoError, match=name):
      video_ops.decode(tmp_path / name)

  rng = np.random.default_rng(0)
  clip, mask = video_ops.take_window(frames, video_ops.train_window(25, rng), 32)  # Shorter than a window.
  assert clip.shape == (32, 32, 43, 3) and mask.tolist() == [True] * 25 + [False] * 7
  np.testing.assert_array_equal(video_ops.eval_windows(250), np.linspace(0, 218, 16).round())
  assert video_ops.window_samples(50, 48_000) == 96_000  # Frame 50 at 25 fps is 2 s in.
  ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, None, :, None] * 4, (2, 48, 64, 3)).copy()
  ramp[1] = 255 - ramp[1]
  cropped = video_ops.inception_crop(ramp, rng, size=16)
  assert cropped.shape == (2, 16, 16, 3)
  np.testing.assert_allclose(cropped[0].astype(int) + cropped[1], 255, atol=2)  # One crop for both frames.
  flips = [video_ops.flip(ramp, np.random.default_rng(s)) for s in range(8)]
  assert {bool(f[0, 0, 0, 0] > f[0, 0, -1, 0]) for f in flips} == {True, False}
  coloured = video_ops.colour(ramp, np.random.default_rng(3))
  draw = np.random.default_rng(3)  # The same draws, applied one by one as the docstring says.
  b, c, s = draw.uniform(-0.25, 0.25), draw.uniform(0.75, 1.25), draw.uniform(0.75, 1.25)
  x = ramp / 255.0 + b
  x = (x - x.mean()) * c + x.mean()
  grey = (x @ [0.299, 0.587, 0.114])[..., None]
  assert coloured.dtype == np.float32
  np.testing.assert_allclose(coloured, np.clip(grey + (x - grey) * s, 0.0, 1.0), atol=1e-5)
  np.testing.assert_array_equal(video_ops.centre_crop(ramp, 48)[0], ramp[0, :, 8:56])
