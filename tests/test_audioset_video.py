"""AudioSet's video (issue 30): clips written with PyAV -> prepare_audioset.py --video -> the reader -> a run.

One fake folder per module (data/audioset.write_fake_video_audioset: 30 fps H.264/MP4, VP8/WebM and
MPEG-4/MKV, 320 x 240 and portrait 240 x 320, a clip shorter than its segment, one without audio, one
whose video is broken, audio alone, a whole video cut to its segment), prepared once at 8 kHz with frames
of short side 40: the train list by the script (a subprocess), the eval list in-process, then resumed
after a lost shard.
Every test using it is `slow`.
"""

import io
import json
import shutil
import sys

import jax
import numpy as np
import pytest
from conftest import child_env, load_config, run
from PIL import Image

from perceiver_jax import data
from perceiver_jax.data import audio_clips, audioset, spec, video_ops

RATE, CLASSES, SIDE, SECONDS = 8000, 5, 40, 1.6
SIZES = {"balanced_train": 8, "eval": 4}
FRAMES = 4  # runlocal's 4 frames of 32 x 32; the audio of the same 0.16 s.


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("audioset_video")
  manual, data_dir = root / "manual", root / "data"
  facts = audioset.write_fake_video_audioset(str(manual), CLASSES, SIZES, SECONDS)
  script = [sys.executable, "scripts/prepare_audioset.py", f"--manual_dir={manual}", f"--data_dir={data_dir}"]
  script += ["--split=balanced_train", f"--sample_rate={RATE}", "--clips_per_shard=4", "--video"]
  proc = run([*script, f"--short_side={SIDE}"], child_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  work = audioset.work_dir(str(data_dir), RATE, video=True)
  logs = {"eval": [], "interrupted": []}
  audioset.prepare_audioset(str(manual), str(data_dir), ("eval",), RATE, 4, logs["eval"].append, True, SIDE)
  (work / "balanced_train" / "000001.npz").unlink()  # As if interrupted while decoding it.
  _, sizes, counts = audioset.prepare_audioset(
    str(manual), str(data_dir), ("eval",), RATE, 4, logs["interrupted"].append, True, SIDE
  )
  out = audioset.dataset_dir(str(data_dir), RATE, video=True)
  return dict(
    manual=manual, data_dir=data_dir, facts=facts, stdout=proc.stdout, work=work, logs=logs, out=out,
    sizes=sizes, counts=counts,
  )  # fmt: skip


def _source(prepared, split):
  import tensorflow_datasets as tfds

  return tfds.builder_from_directory(str(prepared["out"])).as_data_source(split)


def _frames(example) -> list[np.ndarray]:
  return [np.asarray(Image.open(io.BytesIO(b))) for b in example["video"]]


def video_config(prepared, arg="audio_video,runlocal"):
  c = load_config("audioset", arg)
  c.dataset.update(
    name="audioset", data_dir=str(prepared["data_dir"]), sample_rate=RATE, num_classes=CLASSES,
    train_split="balanced_train", num_train_examples=5, num_eval_examples=3, eval_windows=4,
  )  # fmt: skip
  c.model.num_classes = CLASSES
  if "audio" in c.dataset.inputs:
    c.dataset.inputs.audio.shape = (video_ops.window_samples(FRAMES, RATE), 1)
    c.input.modalities.audio.update(samples_per_patch=64, max_resolution=20)
  return c


@pytest.mark.slow  # The shared fixture runs the prepare script (a subprocess).
def test_video_prepare_counts_and_lists_clips_without_video_or_audio_and_resumes(prepared):
  facts, work, logs = prepared["facts"], prepared["work"], prepared["logs"]
  assert (
    "balanced_train: 5 clips; 0 missing, 1 unreadable, 1 no video, 1 unreadable video" in prepared["stdout"]
  )
  listed = {k: (work / f"balanced_train_{k}.txt").read_text() for k in audioset.problem_kinds(True)}
  ids = {k: [line.split()[0] for line in text.splitlines()] for k, text in listed.items()}
  assert ids["unreadable"] == facts["no_audio"][:1] and "no audio stream" in listed["unreadable"]
  assert ids["no_video"] == facts["no_video"][:1] and "no video stream" in listed["no_video"]
  assert ids["unreadable_video"] == facts["broken"][:1] and "cannot be decoded" in listed["unreadable_video"]
  # The eval list decoded its one shard; the lost train shard alone was decoded again.
  assert [line for line in logs["eval"] if "decoded" in line] == ["eval: shard 1/1 decoded"]
  assert [line for line in logs["interrupted"] if "decoded" in line] == ["balanced_train: shard 2/2 decoded"]
  assert prepared["sizes"] == {"balanced_train": 5, "eval": 3}
  assert prepared["counts"]["eval"] == {"missing": 0, "unreadable": 1, "no_video": 0, "unreadable_video": 0}
  assert {s: len(_source(prepared, s)) for s in SIZES} == prepared["sizes"]


@pytest.mark.slow  # The shared fixture runs the prepare script (a subprocess).
def test_frames_are_25_fps_short_side_40_and_in_step_with_the_audio(prepared):
  facts = prepared["facts"]
  for split in SIZES:
    for example in _source(prepared, split):
      ytid, frames = example["ytid"].decode(), _frames(example)
      audio = np.frombuffer(example["audio"], "<i2")
      portrait = ytid in facts["portrait"]
      assert frames[0].shape == ((53, 40, 3) if portrait else (40, 53, 3)), ytid
      seconds = SECONDS * (0.6 if ytid in facts["short"] else 1.0)
      assert abs(len(frames) - seconds * 25) <= 2 and abs(len(audio) / RATE - seconds) < 0.1, ytid
      # Frame f shows the source frame (30 fps; grey level 40 + 60 t) at time start + lag + f / 25: the
      # whole video from 1 s on, the MKV's from its audio's start on the container's clock (AAC's delay).
      start = 1.0 if ytid in facts["whole"] else 0.0
      (path,) = [p for p in (prepared["manual"] / "video").iterdir() if p.stem == ytid]
      audio_start, video_start = audioset._stream_starts(str(path))
      lag = round(max(audio_start - video_start, 0.0) * 25) / 25  # Whole 25 fps frames cut.
      assert lag == 0.0 or path.suffix != ".mp4"
      levels = np.array([f[f.shape[0] // 2 :, :8].mean() for f in frames])
      shown = np.floor((start + lag + np.arange(len(frames)) / 25) * 30 + 1e-6) / 30
      # Two frames off in time would be 4.8 levels in every frame; the codecs' own bias is up to 2.
      error = levels - (40 + 60 * shown)
      assert abs(error.mean()) < 2.5 and np.abs(error).max() < 7, (ytid, levels[:4], shown[:4])


@pytest.mark.slow  # The shared fixture runs the prepare script (a subprocess).
def test_reader_serves_video_windows_with_the_audio_of_the_same_time(prepared):
  config = video_config(prepared)
  reader = audio_clips._Reader(config)
  source = reader.source("train")
  batches = data.train_batches(config)
  first, second, third = next(batches), next(batches), next(batches)
  spec.check_batch(first, spec.batch_spec(config, config.train.global_batch_size // jax.process_count()))
  s = config.dataset.inputs.audio.shape[0]
  from perceiver_jax.data import shares

  index, positions = shares.shuffled_positions(config.seed, 0, config.train.global_batch_size, 5)
  for row, (i, position) in enumerate(zip(index, positions, strict=True)):
    example = source[int(i)]
    rng = np.random.default_rng([config.seed, audio_clips._CROP, int(position)])
    start = video_ops.train_window(len(example["video"]), rng, FRAMES)
    clip = np.frombuffer(example["audio"], "<i2").astype(np.float32) / 32768
    at = video_ops.window_samples(start, RATE)
    np.testing.assert_array_equal(first["inputs"]["audio"][row, :, 0], clip[at : at + s])
  video = first["inputs"]["video"]
  assert video.min() >= 0 and video.max() <= 1 and first["input_mask"]["video"].all()
  resumed = next(data.train_batches(config, start_step=2))
  jax.tree.map(np.testing.assert_array_equal, resumed, third)
  assert not np.array_equal(second["inputs"]["video"], third["inputs"]["video"])
  # Eval: 4 windows evenly over each clip, the centre crop of each frame, the audio from the same instants.
  batches = list(data.eval_batches(config))
  for batch in batches:
    spec.check_batch(
      batch, spec.batch_spec(config, config.train.eval_batch_size // jax.process_count(), "eval")
    )
  real = np.concatenate([b["eval_mask"] for b in batches])
  got = jax.tree.map(lambda *x: np.concatenate(x)[real], *[b["inputs"] for b in batches])
  for i, example in enumerate(_source(prepared, "eval")):
    frames = np.stack(_frames(example))
    clip = np.frombuffer(example["audio"], "<i2").astype(np.float32) / 32768
    for w, f in enumerate(np.linspace(0, len(frames) - FRAMES, 4).round().astype(int)):
      crop = video_ops.centre_crop(frames[f : f + FRAMES], 32).astype(np.float32) / 255
      np.testing.assert_allclose(got["video"][i, w], crop, atol=1e-6)
      at = video_ops.window_samples(f, RATE)
      np.testing.assert_array_equal(got["audio"][i, w, :, 0], clip[at : at + s])
  # The video alone: the same frames, no audio.
  alone = next(data.train_batches(video_config(prepared, "video,runlocal")))
  assert set(alone["inputs"]) == {"video"}
  np.testing.assert_array_equal(alone["inputs"]["video"], first["inputs"]["video"])


@pytest.mark.slow
def test_runlocal_audio_video_trains_resumes_and_evaluates_clips(prepared, tmp_path, monkeypatch):
  from perceiver_jax.training import train

  config, workdir = video_config(prepared), tmp_path / "run"
  config.model.update(num_cross_attends=1, num_latent_transformers=1)  # Compiles in half the time.
  config.train.update(num_steps=4, eval_every=4, log_every=2)
  config.checkpoint.every = 2
  whole = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert json.loads((workdir / "results.json").read_text())["eval"]["mAP"] == whole["eval"]["mAP"]
  shutil.rmtree(workdir / "checkpoints" / "4")
  monkeypatch.setattr(train.Trainer, "init", lambda self: pytest.fail("started afresh, not resumed"))
  resumed = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert resumed["params_checksum"] == whole["params_checksum"]
  assert resumed["eval"]["count"] == whole["eval"]["count"] == 3  # Clips, not windows.
  assert resumed["eval"]["mAP"] == pytest.approx(whole["eval"]["mAP"], abs=1e-6)
