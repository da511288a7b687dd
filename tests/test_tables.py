"""The tables tool: which run fills which row, exact rendering, dashes, files; the reproduction's driver."""

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from perceiver_jax.tools import reproduce, tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(
  root,
  name,
  model_name,
  permutation="none",
  top1=0.9,
  *,
  seed=0,
  dataset="digits",
  position="fourier",
  params=1000,
  history=(),
  **model,
):
  """Writes a finished run as the trainer does (config.json, results.json, metrics.jsonl); returns its dir."""
  path = os.path.join(root, name)
  os.makedirs(path)
  config = {
    "model_name": model_name,
    "model": model,
    "seed": seed,
    "config_arg": "",
    "input": {"permutation": permutation, "position_encoding": position},
    "dataset": {"name": dataset},
  }
  results = {"eval": {"top1": top1, "top5": 1.0, "loss": 0.1}, "step": 100, "params": params}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(results, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step, value in history:
      f.write(json.dumps({"step": step, "train_loss": 1.0}) + "\n")
      f.write(json.dumps({"step": step, "eval_top1": value}) + "\n")
  return path


@pytest.fixture
def digits_runs(tmp_path):
  root = str(tmp_path / "runs")
  make_run(
    root,
    "p0",
    "perceiver",
    "none",
    0.97,
    seed=0,
    params=76_908,
    num_cross_attends=2,
    history=[(50, 0.8), (100, 0.97)],
  )
  make_run(root, "p1", "perceiver", "none", 0.98, seed=1, params=76_908, num_cross_attends=2)
  make_run(root, "p2", "perceiver", "fixed", 0.975, params=76_908, num_cross_attends=2)
  make_run(root, "r0", "resnet", "none", 0.95, params=1_233_578, history=[(100, 0.95)])
  make_run(root, "v0", "vit", "random", 0.3, params=206_794)
  make_run(root, "l0", "perceiver", "none", 0.9, position="learned", params=179_480, num_cross_attends=2)
  return root


GFLOPS = {"perceiver": 0.0123, "resnet": 0.5, "resnet50": 0.5, "vit": 2.0}
FAKE_GFLOPS = lambda config: GFLOPS[config["model_name"]]

EXPECTED_TABLE2 = """\
### Table 2: permuted pixels (digits)

| model | raw: paper | raw: measured | permuted: paper | permuted: measured | random perm.: measured \
| input receptive field (paper) | params | GFLOPs |
|---|---|---|---|---|---|---|---|---|
| ResNet-50 (FF) | 73.5 | 95.0 | 39.4 | — | — | 49 | 1.2M | 0.5 |
| ViT-B-16 (FF) | 76.7 | — | 61.7 | — | 30.0 | 256 | 206.8K | 2 |
| Transformer (64x64, FF) | 57.0 | — | 57.0 | — | — | 4,096 | — | — |
| Perceiver (FF) | 78.0 | 97.5 ± 0.7 (n=2) | 78.0 | 97.5 | — | 50,176 | 76.9K | 0.0123 |
| Perceiver (learned pos.) | 70.9 | 90.0 | 70.9 | — | — | 50,176 | 179.5K | 0.0123 |
"""

EXPECTED_TABLE1 = """\
### Table 1: top-1 (digits)

| model | top-1: paper | top-1: measured | params | GFLOPs |
|---|---|---|---|---|
| ResNet-50 (from the literature) | 77.6 | — | — | — |
| ViT-B-16 (from the literature) | 77.9 | — | — | — |
| ResNet-50 (FF) | 73.5 | 95.0 | 1.2M | 0.5 |
| ViT-B-16 (FF) | 76.7 | — | — | — |
| Transformer (64x64, FF) | 57.0 | — | — | — |
| Perceiver (FF) | 78.0 | 97.5 ± 0.7 (n=2) | 76.9K | 0.0123 |
"""


def test_tables_render_known_runs_exactly(digits_runs):
  runs = tables.find_runs([digits_runs])
  assert len(runs) == 6
  rendered = {table.key: markdown for _, table, markdown, _ in tables.report(runs, FAKE_GFLOPS)}
  assert list(rendered) == ["table1", "table2"]  # Digits runs fill no ImageNet ablation.
  assert rendered["table1"] == EXPECTED_TABLE1
  assert rendered["table2"] == EXPECTED_TABLE2


def test_a_run_stored_under_a_model_alias_fills_that_models_rows(tmp_path):
  root = str(tmp_path)
  make_run(root, "new", "resnet", top1=0.9, params=1_233_578)
  make_run(root, "old", "resnet50", top1=0.8, params=1_233_578)  # models.ALIASES["resnet50"] == "resnet"
  [(_, _, table1, _), _] = tables.report(tables.find_runs([root]), FAKE_GFLOPS)
  [row] = [line for line in table1.splitlines() if line.startswith("| ResNet-50 (FF)")]
  assert "85.0 ± 7.1 (n=2)" in row


def test_no_runs_give_imagenet_tables_of_dashes():
  [(d1, t1, table1, csv1), (d2, t2, table2, _)] = tables.report([])
  assert (d1, t1.key, d2, t2.key) == ("imagenet2012", "table1", "imagenet2012", "table2")
  for markdown in (table1, table2):
    header, *rows = [line.strip("|").split(" | ") for line in markdown.splitlines()[2:] if line]
    rows = rows[1:]  # Past the |---| line.
    assert len(rows) == len(t1.rows if markdown is table1 else t2.rows)
    columns = [i for i, h in enumerate(header) if "measured" in h or h.strip() in ("params", "GFLOPs")]
    assert all(row[i].strip() == tables.DASH for row in rows for i in columns)
  rows = list(csv.DictReader(csv1.splitlines()))
  assert [r["num_runs"] for r in rows] == ["0"] * 6 and all(r["top1_mean"] == "" for r in rows)


def test_perceiver_runs_go_to_their_ablation_rows_only(tmp_path):
  root = str(tmp_path)
  kw = dict(dataset="imagenet2012", num_self_attends_per_block=6, num_latent_transformers=8)
  make_run(root, "k8", "perceiver", top1=0.78, num_cross_attends=8, **kw)
  make_run(root, "k4", "perceiver", top1=0.765, num_cross_attends=4, **kw)
  # Each of 4 cross-attends followed by one latent Transformer (R = 4): a different model, in no row.
  make_run(
    root,
    "k4r4",
    "perceiver",
    top1=0.5,
    num_cross_attends=4,
    num_latent_transformers=4,
    dataset="imagenet2012",
  )
  make_run(root, "learned", "perceiver", top1=0.709, position="learned", num_cross_attends=1, **kw)
  make_run(root, "k4_start", "perceiver", top1=0.759, num_cross_attends=4, cross_attend_layout="start", **kw)
  make_run(
    root,
    "unshared",
    "perceiver",
    top1=0.729,
    num_cross_attends=8,
    share_cross_attends=False,
    share_latent_transformers=False,
    **kw,
  )
  make_run(
    root,
    "only",
    "perceiver",
    top1=0.394,
    num_cross_attends=4,
    dataset="imagenet2012",
    num_self_attends_per_block=0,
  )
  runs = tables.find_runs([root])
  filled = {}
  for dataset, table, _, table_csv in tables.report(runs):
    assert dataset == "imagenet2012"
    for row in csv.DictReader(table_csv.splitlines()):
      if row["num_runs"] != "0":
        filled[(table.key, row["row"])] = round(float(row["top1_mean"]), 6)
  assert filled == {
    ("table1", "Perceiver (FF)"): 78.0,
    ("table2", "Perceiver (FF)"): 78.0,
    ("table2", "Perceiver (learned pos.)"): 70.9,
    ("ablation_cross_attends", "8"): 78.0,
    ("ablation_cross_attends", "4"): 76.5,
    ("ablation_cross_attends_at_start", "4"): 75.9,
    ("ablation_sharing", "shared"): 78.0,
    ("ablation_sharing", "unshared"): 72.9,
    ("ablation_cross_attends_only", "4"): 39.4,
  }


def test_cell_mean_and_spread_are_the_sample_statistics():
  values = [0.91, 0.935, 0.97]
  cell = tables.Cell(tuple(tables.FinishedRun("", {}, {"eval": {"top1": v}}) for v in values))
  assert cell.n == 3
  assert cell.mean == pytest.approx(100 * statistics.mean(values))
  assert cell.std == pytest.approx(100 * statistics.stdev(values))
  assert tables.Cell(()).mean is None and tables.Cell(cell.runs[:1]).std is None


def test_write_report_writes_markdown_csv_and_curves(digits_runs, tmp_path):
  out = str(tmp_path / "out")
  markdown = tables.write_report(tables.find_runs([digits_runs]), out, FAKE_GFLOPS)
  with open(os.path.join(out, "tables.md")) as f:
    assert f.read() == markdown
  assert EXPECTED_TABLE2 in markdown
  with open(os.path.join(out, "table2_digits.csv")) as f:
    rows = {(r["row"], r["permutation"]): r for r in csv.DictReader(f)}
  assert rows[("Perceiver (FF)", "none")]["num_runs"] == "2"
  assert float(rows[("Perceiver (FF)", "none")]["top1_mean"]) == pytest.approx(97.5)
  assert rows[("ViT-B-16 (FF)", "random")]["paper_top1"] == ""
  with open(os.path.join(out, "curves_digits.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  run = tables.load_finished_run(os.path.join(digits_runs, "p0"))
  assert run.curve() == ([50, 100], [80.0, 97.0])


@pytest.mark.slow
def test_make_tables_script(digits_runs, tmp_path):
  out = str(tmp_path / "script_out")
  subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "scripts", "make_tables.py"),
      f"--runs={digits_runs}",
      f"--out={out}",
      "--nogflops",
    ],
    check=True,
    capture_output=True,
    timeout=120,
  )
  with open(os.path.join(out, "tables.md")) as f:
    assert "| Perceiver (FF) | 78.0 | 97.5 ± 0.7 (n=2) |" in f.read()


def test_reproduce_suite_trains_each_row_once_then_tables(tmp_path, config_loader):
  get_config = lambda arg: config_loader("digits", arg)
  trained = []

  def fake_train(config, workdir):
    # Stands in for train_and_evaluate: the same artefacts, a top-1 that tells the row apart.
    trained.append(workdir)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort())
    top1 = {"none": 0.9, "fixed": 0.8, "random": 0.7}[config.input.permutation] + 0.01 * config.seed
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"eval": {"top1": top1}, "step": config.train.num_steps, "params": 1}, f)
    return {"eval": {"top1": top1}}

  workdir = str(tmp_path)
  markdown = reproduce.run_suite("digits", workdir, get_config, fake_train)
  assert len(trained) == len(set(trained)) == 45
  assert (
    "| Perceiver (learned pos.) | 70.9 | 91.0 ± 1.0 (n=3) | 70.9 | 81.0 ± 1.0 (n=3) | 71.0 ± 1.0 (n=3) |"
    in (markdown)
  )
  table2 = markdown.split("### Table 2")[1]
  assert table2.count("(n=3)") == 5 * 3  # Every row and column of Table 2 filled by three seeds.
  # A second call trains nothing: every run has its results.
  reproduce.run_suite("digits", workdir, get_config, fake_train)
  assert len(trained) == 45
  with open(os.path.join(workdir, "vit", "random", "seed2", "config.json")) as f:
    config = json.load(f)
  assert (config["model_name"], config["input"]["permutation"], config["seed"]) == ("vit", "random", 2)
  assert config["train"]["num_steps"] == get_config("reproduce").train.num_steps


def test_reproduce_suite_stops_at_a_preempted_run_and_resumes(tmp_path, config_loader):
  get_config = lambda arg: config_loader("digits", arg)
  trained = []

  def train(config, workdir, preempt_at=None):
    trained.append(workdir)
    if len(trained) == preempt_at:  # As train_and_evaluate returns on SIGTERM: no results.json.
      return {"preempted": True, "step": 7}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort())
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"eval": {"top1": 0.5}, "step": 1, "params": 1}, f)
    return {"eval": {"top1": 0.5}}

  workdir = str(tmp_path)
  markdown = reproduce.run_suite("digits", workdir, get_config, lambda c, w: train(c, w, preempt_at=3))
  assert len(trained) == 3  # Stopped at the preempted run, and still wrote the tables of two runs.
  assert markdown.split("### Table 2")[1].count("(n=2)") == 1
  reproduce.run_suite("digits", workdir, get_config, train)
  assert len(trained) == 3 + 43 and trained[3] == trained[2]  # Resumed with the preempted run.


def test_suite_runs_validate_names():
  with pytest.raises(ValueError, match="suite"):
    reproduce.suite_runs("cifar")
  with pytest.raises(ValueError, match="models"):
    reproduce.suite_runs("digits", models=["resnet", "mlp"])
  assert reproduce.suite_runs("digits", seeds=[4], models=["vit"], extra="num_steps=5") == [
    ("vit/raw/seed4", "reproduce,vit,seed=4,num_steps=5"),
    ("vit/permuted/seed4", "reproduce,vit,permuted,seed=4,num_steps=5"),
    ("vit/random/seed4", "reproduce,vit,permuted_random,seed=4,num_steps=5"),
  ]


def test_multi_label_runs_load_but_fill_no_top1_cell_and_old_runs_with_images_per_s_still_do(tmp_path):
  root = str(tmp_path)
  old = make_run(root, "old", "resnet", top1=0.9, params=1_233_578)
  with open(os.path.join(old, "metrics.jsonl"), "a") as f:  # Logged before examples_per_s.
    f.write(json.dumps({"step": 100, "train_loss": 1.0, "images_per_s": 50.0}) + "\n")
  multi = make_run(root, "multi", "resnet", params=1_233_578)
  with open(os.path.join(multi, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(multi, "config.json"), "w") as f:
    json.dump(dict(config, task="multi_label"), f)
  with open(os.path.join(multi, "results.json"), "w") as f:
    json.dump({"eval": {"mAP": 0.3, "loss": 0.5, "count": 10}, "step": 100, "params": 1_233_578}, f)
  runs = tables.find_runs([root])
  assert [r.task for r in runs] == ["multi_label", "single_label"]  # Both load (sorted by path).
  [(_, _, table1, _), _] = tables.report(runs, FAKE_GFLOPS)
  [row] = [line for line in table1.splitlines() if line.startswith("| ResNet-50 (FF)")]
  assert row.split(" | ")[2] == "90.0"  # The old single-label run alone (two runs would show n=2).


def _sound_run(root, name, mAP, inputs, dataset="sounds", seed=0, dropout=None):
  """A finished multi-label run fed `inputs` ({modality: front-end settings}; one entry 'audio' alone:
  one array)."""
  path = make_run(root, name, "perceiver", dataset=dataset, seed=seed)
  if set(inputs) == {"audio"} and dropout is None:
    settings = dict(inputs["audio"])
  else:
    settings = dict(front_end="multimodal", modality_dropout=dropout or {}, modalities=inputs)
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(config, task="multi_label", input=settings), f)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump({"eval": {"mAP": mAP, "loss": 0.5, "count": 10}, "step": 100, "params": 2000}, f)


def test_table3_puts_sound_and_video_runs_in_the_papers_layout(tmp_path):
  root, out = str(tmp_path / "runs"), str(tmp_path / "tables")
  raw, video = {"front_end": "audio"}, {"front_end": "video"}
  mel = {"front_end": "mel", "num_time_masks": 2, "num_freq_masks": 2}
  tuned = dict(mel, num_time_masks=0, num_freq_masks=0)
  _sound_run(root, "raw0", 0.80, {"audio": raw})
  _sound_run(root, "raw1", 0.90, {"audio": raw}, seed=1)
  _sound_run(root, "video", 0.30, {"video": video}, dataset="audio_video")
  _sound_run(root, "av", 0.88, {"audio": raw, "video": video}, dataset="audio_video", dropout={"video": 0.3})
  tuned_dropout = {"audio": 0.1, "video": 0.3}
  _sound_run(root, "tuned", 0.91, {"audio": tuned, "video": video}, "audio_video", dropout=tuned_dropout)
  _sound_run(root, "mel_av", 0.5, {"audio": mel, "video": video}, "audioset", dropout={"video": 0.3})
  _sound_run(root, "av_no_vd", 0.7, {"audio": raw, "video": video}, dataset="audio_video", dropout={})
  markdown = tables.write_report(tables.find_runs([root]), out)
  lines = markdown.splitlines()
  assert "Table 1" not in markdown  # Multi-label runs only: Table 3, not the top-1 tables.
  miniature = lines[lines.index("### Table 3: AudioSet, mAP (sounds)") :]
  assert "| Perceiver (raw audio) | 38.3 | 85.0 ± 7.1 (n=2) | 25.8 | 30.0 | 43.5 | 88.0 |" in miniature
  assert "| Perceiver (mel spectrogram) | 38.4 | — | 25.8 | 30.0 | 43.2 | — |" in miniature
  assert "| Perceiver (mel spectrogram, tuned) | — | — | — | — | 44.2 | 91.0 |" in miniature
  assert "| CNN-14 (Kong 2020) | 43.1 | — | — | — | — | — |" in miniature
  assert "| Perceiver (raw audio), no video dropout | — | — | — | — | 39.7 | 70.0 |" in miniature
  audioset = lines[lines.index("### Table 3: AudioSet, mAP (audioset)") :]
  assert "| Perceiver (mel spectrogram) | 38.4 | — | 25.8 | — | 43.2 | 50.0 |" in audioset
  with open(os.path.join(out, "table3_sounds.csv")) as f:
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(f)}
  assert float(rows[("Perceiver (raw audio)", "audio")]["map_mean"]) == pytest.approx(85.0)
  assert rows[("Perceiver (raw audio)", "audio")]["num_runs"] == "2"
  assert rows[("G-blend (Wang 2020)", "video")]["paper_map"] == "18.8"
  assert rows[("Perceiver (mel spectrogram)", "av")]["map_mean"] == ""
