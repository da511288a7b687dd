"""AudioSet on disk -> scripts/prepare_audioset.py -> TFDS -> the clip reader -> a runlocal run (a fake set).

One fake folder (FLAC, WAV and AAC/.m4a; 8, 11.025 and 16 kHz; mono and stereo; a 4 s clip, a corrupt file,
a missing one) is written and prepared once per module, at 8 kHz: the train list by the script (a
subprocess), the eval list in-process (so that the resume is observed). Every test using it is `slow`.
"""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from conftest import child_env, load_config, run

from perceiver_jax import data
from perceiver_jax.data import audioset, shares, spec
from perceiver_jax.training import tasks

RATE, CLASSES, SIZES = 8000, 5, {"balanced_train": 16, "eval": 8}


def _mtimes(folder) -> dict:
  return {p.name: os.stat(p).st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("audioset")
  manual, data_dir = root / "manual", root / "data"
  facts = audioset.write_fake_audioset(str(manual), CLASSES, SIZES)
  script = [sys.executable, "scripts/prepare_audioset.py", f"--manual_dir={manual}", f"--data_dir={data_dir}"]
  script += ["--split=balanced_train", f"--sample_rate={RATE}", "--clips_per_shard=4"]
  proc = run(script, child_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  work = audioset.work_dir(str(data_dir), RATE)
  train_shards = _mtimes(work / "balanced_train")
  logs, out, files = {}, audioset.dataset_dir(str(data_dir), RATE), []
  for name in ("eval", "again"):  # The eval list added, then the same call once more.
    logs[name] = []
    audioset.prepare_audioset(str(manual), str(data_dir), ("eval",), RATE, 4, logs[name].append)
    files.append(_mtimes(out))
  (work / "eval" / "000001.npz").unlink()  # As if interrupted while decoding it.
  logs["interrupted"] = []
  audioset.prepare_audioset(str(manual), str(data_dir), ("eval",), RATE, 4, logs["interrupted"].append)
  return dict(
    manual=manual, data_dir=data_dir, facts=facts, stdout=proc.stdout, work=work, logs=logs, out=out,
    train_shards=train_shards, files=files,
  )  # fmt: skip


def fake_config(prepared, arg="runlocal", samples=1024, **dataset):
  c = load_config("audioset", arg)
  c.dataset.update(
    name="audioset", data_dir=str(prepared["data_dir"]), sample_rate=RATE, num_classes=CLASSES,
    train_split="balanced_train", num_train_examples=14, num_eval_examples=6, eval_windows=4,
  )  # fmt: skip
  c.dataset.update(dataset)
  c.dataset.inputs.shape = (samples, 1)
  c.model.num_classes = CLASSES
  c.input.update(samples_per_patch=64, max_resolution=c.dataset.inputs.shape[0] // 64)
  return c


def _source(prepared, split):
  import tensorflow_datasets as tfds

  return tfds.builder_from_directory(str(prepared["out"])).as_data_source(split)


@pytest.mark.slow  # The shared fixture runs the prepare script (a subprocess).
def test_prepare_counts_and_lists_bad_clips_and_resumes_without_redoing(prepared):
  facts, work, logs = prepared["facts"], prepared["work"], prepared["logs"]
  assert "balanced_train: 14 clips; 1 missing, 1 unreadable" in prepared["stdout"]
  for split in SIZES:
    missing = (work / f"{split}_missing.txt").read_text().splitlines()
    unreadable = (work / f"{split}_unreadable.txt").read_text().splitlines()
    assert [line.split()[0] for line in missing] == [y for y in facts["missing"] if y[:2] == split[:2]]
    assert [line.split()[0] for line in unreadable] == [y for y in facts["corrupt"] if y[:2] == split[:2]]
  # Adding eval decoded its 2 shards only; the train shards were kept, not redone.
  assert sum("decoded" in line for line in logs["eval"]) == 2
  assert not any("balanced_train" in line for line in logs["eval"])
  assert _mtimes(work / "balanced_train") == prepared["train_shards"]
  assert any("nothing to do" in line for line in logs["again"])
  assert prepared["files"][0] == prepared["files"][1]  # The TFDS files were not rewritten either.
  assert not any("decoded" in line for line in logs["again"])
  # An interrupted run's lost shard is decoded again, alone; the dataset holds both splits.
  assert [line for line in logs["interrupted"] if "decoded" in line] == ["eval: shard 2/2 decoded"]
  assert {s: len(_source(prepared, s)) for s in SIZES} == {"balanced_train": 14, "eval": 6}


@pytest.mark.slow  # The shared fixture runs the prepare script (a subprocess).
def test_clips_are_mono_at_the_rate_cut_to_the_segment_with_their_labels(prepared):
  rows = {}
  for split in SIZES:
    lines = (prepared["manual"] / f"{split}_segments.csv").read_text().splitlines()[3:]
    rows.update({line.split(",")[0]: line.split('"')[1].split(",") for line in lines})
  checked = 0
  for split in SIZES:
    for example in _source(prepared, split):
      ytid, audio = example["ytid"].decode(), np.frombuffer(example["audio"], "<i2")
      assert len(audio) == (4 if ytid in prepared["facts"]["short"] else 10) * RATE
      classes = [int(m.split("c")[-1]) for m in rows[ytid]]
      np.testing.assert_array_equal(np.flatnonzero(example["labels"]), sorted(classes))
      if len(classes) == 1:  # The tone of the class, at its pitch after resampling from 8-16 kHz (and AAC).
        spectrum = np.abs(np.fft.rfft(audio.astype(np.float64)))
        peak = np.fft.rfftfreq(len(audio), 1 / RATE)[np.argmax(spectrum)]
        assert abs(peak - 300 * 1.5 ** classes[0]) < 2.0, (ytid, peak)
        checked += 1
  assert checked >= 8


@pytest.mark.slow  # The shared fixture runs the prepare script (a subprocess).
def test_train_crops_are_windows_of_the_clips_and_resume_reads_the_same(prepared):
  config = fake_config(prepared)
  source, s = _source(prepared, "balanced_train"), 1024
  batches = data.train_batches(config)
  first, second, third = next(batches), next(batches), next(batches)
  spec.check_batch(first, spec.batch_spec(config, config.train.global_batch_size // jax.process_count()))
  index, _ = shares.shuffled_positions(config.seed, 0, config.train.global_batch_size, 14)
  for row, i in enumerate(index):
    clip = np.frombuffer(source[int(i)]["audio"], "<i2").astype(np.float32) / 32768
    x = first["inputs"][row, :, 0]
    assert any(np.array_equal(clip[o : o + s], x) for o in np.flatnonzero(clip == x[0])), row
    np.testing.assert_array_equal(first["label"][row], source[int(i)]["labels"])
  assert first["input_mask"].all()
  resumed = next(data.train_batches(config, start_step=2))
  jax.tree.map(np.testing.assert_array_equal, resumed, third)
  assert not np.array_equal(second["inputs"], third["inputs"])


@pytest.mark.slow  # The shared fixture runs the prepare script (a subprocess).
def test_eval_is_every_clip_once_in_windows_covering_it(prepared, monkeypatch):
  s = 5 * RATE  # Longer than the 4 s clip: its windows are padded and masked.
  config = fake_config(prepared, samples=s)
  source = _source(prepared, "eval")
  batches = list(data.eval_batches(config))
  for batch in batches:
    spec.check_batch(
      batch, spec.batch_spec(config, config.train.eval_batch_size // jax.process_count(), "eval")
    )
  got = np.concatenate([b["inputs"] for b in batches])[np.concatenate([b["eval_mask"] for b in batches])]
  mask = np.concatenate([b["input_mask"] for b in batches])[np.concatenate([b["eval_mask"] for b in batches])]
  assert got.shape == (6, 4, s, 1)
  for i, example in enumerate(source):
    clip = np.frombuffer(example["audio"], "<i2").astype(np.float32) / 32768
    starts = [0, 0, 0, 0] if len(clip) < s else [0, 13333, 26667, 40000]  # linspace(0, L - S, 4)
    for w, start in enumerate(starts):
      part = clip[start : start + s]
      np.testing.assert_array_equal(got[i, w, : len(part), 0], part)
      assert mask[i, w].sum() == len(part) and not got[i, w, len(part) :].any()
  # Two processes' shares of the train and eval batches are the one-process batches, split.
  train_one = next(data.train_batches(config))
  shares_of = {"train": [], "eval": []}
  for process in range(2):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    shares_of["train"].append(next(data.train_batches(config)))
    shares_of["eval"].append(list(data.eval_batches(config)))
  monkeypatch.undo()
  jax.tree.map(
    lambda a, b, c: np.testing.assert_array_equal(np.concatenate([b, c]), a), train_one, *shares_of["train"]
  )
  for one, first, second in zip(batches, *shares_of["eval"], strict=True):
    jax.tree.map(lambda a, b, c: np.testing.assert_array_equal(np.concatenate([b, c]), a), one, first, second)


def test_averaged_window_logits_score_the_windows_mean():
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5)) * 4
  for task, score in (("multi_label", jax.nn.sigmoid), ("single_label", jax.nn.softmax)):
    averaged = tasks.average_windows(task, logits)
    np.testing.assert_allclose(score(averaged), np.mean(score(logits), axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_runlocal_trains_resumes_and_evaluates_clips_with_sklearn_map(prepared, tmp_path, monkeypatch):
  from sklearn.metrics import average_precision_score

  from perceiver_jax.training import train

  config, workdir = fake_config(prepared), tmp_path / "run"
  config.model.update(num_cross_attends=1, num_latent_transformers=1)  # Compiles in half the time.
  config.train.update(num_steps=4, eval_every=4, log_every=2)
  config.checkpoint.every = 2
  whole = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert json.loads((workdir / "results.json").read_text())["eval"]["mAP"] == whole["eval"]["mAP"]
  # Resumed from the checkpoint of step 2 (the last one gone), the run ends exactly where it ended.
  shutil.rmtree(workdir / "checkpoints" / "4")
  monkeypatch.setattr(train.Trainer, "init", lambda self: pytest.fail("started afresh, not resumed"))
  resumed = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert resumed["params_checksum"] == whole["params_checksum"]

  evaluated = train.evaluate_run(str(workdir), save_predictions=True)
  saved = json.loads((workdir / "eval_results.json").read_text())
  predictions = np.load(workdir / train.PREDICTIONS)
  scores, labels = predictions["scores"], predictions["labels"]
  assert (
    scores.shape == labels.shape == (6, CLASSES) and evaluated["eval"]["count"] == 6
  )  # Clips, not windows.
  np.testing.assert_array_equal(labels, [e["labels"] for e in _source(prepared, "eval")])
  columns = [k for k in range(CLASSES) if labels[:, k].any()]
  want = np.mean([average_precision_score(labels[:, k], scores[:, k]) for k in columns])
  assert saved["eval"]["mAP"] == pytest.approx(want, abs=1e-9) and "per_class_ap" in saved["eval"]
  assert saved["eval"]["mAP"] == pytest.approx(whole["eval"]["mAP"], abs=1e-6)


def test_a_tfds_audio_dataset_by_name_is_resampled_cropped_and_masked(config_loader):
  """speech_commands (configs/sounds.py:speech_commands) through tfds.testing.mock_data, read at 8 kHz."""
  import tensorflow_datasets as tfds
  from scipy import signal

  from perceiver_jax.training import build

  config = config_loader("sounds", "speech_commands,runlocal")
  config.dataset.update(sample_rate=8000, num_eval_examples=6)
  config.dataset.inputs.shape = (32, 1)  # The mock's clips are 1-60 samples at 16 kHz: some longer.
  config.train.update(global_batch_size=8, eval_batch_size=8)
  with tfds.testing.mock_data(num_examples=6):
    source = tfds.data_source("speech_commands", split="test")
    clips = [source[i]["audio"] for i in range(6)]
    labels = [int(source[i]["label"]) for i in range(6)]
    train = next(data.train_batches(config))
    evals = list(data.eval_batches(config))
  spec.check_batch(train, spec.batch_spec(config, 8 // jax.process_count()))
  batch = evals[0]
  spec.check_batch(batch, spec.batch_spec(config, 8 // jax.process_count(), "eval"))
  assert len(evals) == 1 and batch["eval_mask"].tolist() == [True] * 6 + [False] * 2
  assert batch["label"][:6].tolist() == labels
  for i, clip in enumerate(clips):  # Resampled 16 -> 8 kHz, centred in the window or padded and masked.
    want = signal.resample_poly(clip.astype(np.float32) / 32768, 1, 2)
    start = max(len(want) - 32, 0) // 2
    part = want[start : start + 32]
    assert batch["input_mask"][i].sum() == len(part)
    np.testing.assert_allclose(batch["inputs"][i, : len(part), 0], part, atol=1e-6)
  model = build.make_model(config)  # The same front end (raw patches) and model: single-label logits [b, 12].
  inputs, mask = train["inputs"], train["input_mask"]

  def forward():
    params, state = model.init(jax.random.PRNGKey(0), inputs, is_training=True)
    return model.apply(params, state, None, inputs, is_training=False, input_mask=mask)[0]

  assert jax.eval_shape(forward).shape == (len(inputs), 12)
