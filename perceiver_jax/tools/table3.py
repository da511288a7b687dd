"""The paper's Table 3 (AudioSet, mAP) from finished multi-label runs, beside the paper's reference rows.

Columns are what a run was fed, read from its config: `audio` (one array of samples, front end `audio` or
`mel`, or a mapping holding `audio` only), `video` (a mapping with `video` only), `A+V` (both). Rows are the
audio input: `Perceiver (raw audio)` (front end `audio`), `Perceiver (mel spectrogram)` (`mel`), and the
tuned mel model (`mel` with SpecAugment off and the audio stream dropped in training,
`input.modality_dropout.audio` > 0). A+V runs without video dropout (`input.modality_dropout.video` 0) fill
the rows of the paper's ablation (39.7 raw, 39.9 mel, Sec. 4.2). A video-only run has no audio, so, as the
paper's Table 3, it fills the video cell of both untuned rows. Cells show the eval mAP in percent (the
paper's scale), averaged over the runs that share it (seeds); a dash where no run exists, never a made-up
number. Each dataset gets its own
table (`audioset`; the embedded miniature's `sounds` and `audio_video` runs share one, `sounds`); the
paper's figures are AudioSet's, the reference rather than the target elsewhere.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

DASH = "—"
COLUMNS = ("audio", "video", "av")
COLUMN_TITLES = {"audio": "Audio", "video": "Video", "av": "A+V"}
RAW, MEL, TUNED = "Perceiver (raw audio)", "Perceiver (mel spectrogram)", "Perceiver (mel spectrogram, tuned)"
RAW_NO_VD, MEL_NO_VD = f"{RAW}, no video dropout", f"{MEL}, no video dropout"
# The paper's Table 3 (PAPER.md): (row, {column: mAP}); '-' cells are absent.
PAPER_ROWS = (
  ("Benchmark (Gemmeke 2017)", {"audio": 31.4}),
  ("Attention (Kong 2018)", {"audio": 32.7}),
  ("Multi-level Attention (Yu 2018)", {"audio": 36.0}),
  ("ResNet-50 (Ford 2019)", {"audio": 38.0}),
  ("CNN-14 (Kong 2020)", {"audio": 43.1}),
  ("CNN-14, no balancing, no mixup", {"audio": 37.5}),
  ("G-blend (Wang 2020)", {"audio": 32.4, "video": 18.8, "av": 41.8}),
  ("Attention AV-fusion (Fayek & Kumar 2020)", {"audio": 38.4, "video": 25.7, "av": 46.2}),
  (RAW, {"audio": 38.3, "video": 25.8, "av": 43.5}),
  (MEL, {"audio": 38.4, "video": 25.8, "av": 43.2}),
  (TUNED, {"av": 44.2}),
  (RAW_NO_VD, {"av": 39.7}),  # The paper's text (Sec. 4.2), not its table.
  (MEL_NO_VD, {"av": 39.9}),
)
PERCEIVER_ROWS = (RAW, MEL, TUNED, RAW_NO_VD, MEL_NO_VD)
# Datasets whose runs share one table: the embedded miniature's audio and audio+video runs.
FAMILY = {"audio_video": "sounds"}

Config = Mapping[str, Any]


def family(config: Config) -> str:
  name = config["dataset"]["name"]
  return FAMILY.get(name, name)


def _streams(config: Config) -> dict[str, dict]:
  """{modality: its front end's settings} of a run; one array (no modalities) is audio."""
  settings = config.get("input", {})
  if settings.get("front_end") == "multimodal":
    return dict(settings.get("modalities", {}))
  return {"audio": dict(settings)}


def column(config: Config) -> str | None:
  """'audio', 'video' or 'av' for a run of sound and/or video; None for anything else."""
  streams = _streams(config)
  kinds = {name for name in streams if name in ("audio", "video")}
  if set(streams) != kinds or not kinds:
    return None
  if "audio" in kinds and streams["audio"].get("front_end") not in ("audio", "mel"):
    return None
  return "av" if len(kinds) == 2 else kinds.pop()


def rows_of(config: Config) -> tuple[str, ...]:
  """The Perceiver rows a run fills (a video-only run: both untuned rows)."""
  col = column(config)
  if col is None or config.get("model_name") != "perceiver":
    return ()
  if col == "video":
    return (RAW, MEL)
  audio = _streams(config)["audio"]
  dropout = config["input"].get("modality_dropout") or {}
  without = col == "av" and not dropout.get("video", 0)  # The paper's ablation of video dropout.
  if audio["front_end"] == "audio":
    return (RAW_NO_VD,) if without else (RAW,)
  spec_augment = audio.get("num_time_masks", 0) or audio.get("num_freq_masks", 0)
  if dropout.get("audio", 0) > 0 and not spec_augment:
    return (TUNED,)
  return (MEL_NO_VD,) if without else (MEL,)


def cells(runs: Sequence[Any], dataset: str) -> dict[tuple[str, str], list[float]]:
  """(row, column) -> the eval mAPs in percent of `dataset`'s multi-label runs (FinishedRun) there."""
  out: dict[tuple[str, str], list[float]] = {(r, c): [] for r in PERCEIVER_ROWS for c in COLUMNS}
  for run in runs:
    if run.task != "multi_label" or family(run.config) != dataset:
      continue
    col = column(run.config)
    for row in rows_of(run.config):
      out[(row, col)].append(100.0 * float(run.results["eval"]["mAP"]))
  return out


def _mean(values: Sequence[float]) -> float | None:
  return sum(values) / len(values) if values else None


def _measured(values: Sequence[float]) -> str:
  if not values:
    return DASH
  if len(values) == 1:
    return f"{values[0]:.1f}"
  mean = _mean(values)
  std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
  return f"{mean:.1f} ± {std:.1f} (n={len(values)})"


def render_markdown(measured: Mapping[tuple[str, str], list[float]], dataset: str) -> str:
  """Table 3 in the paper's layout: every row of the paper, each Perceiver row's measured cells beside."""
  header = ["model"] + [f"{COLUMN_TITLES[c]}: {what}" for c in COLUMNS for what in ("paper", "measured")]
  lines = [
    f"### Table 3: AudioSet, mAP ({dataset})",
    "",
    "mAP in percent (the paper's scale) on the eval split.",
  ]
  lines += ["", "| " + " | ".join(header) + " |"]
  lines.append("|" + "|".join("---" for _ in header) + "|")
  for row, paper in PAPER_ROWS:
    fields = [row]
    for c in COLUMNS:
      fields.append(DASH if paper.get(c) is None else f"{paper[c]:.1f}")
      fields.append(_measured(measured[(row, c)]) if row in PERCEIVER_ROWS else DASH)
    lines.append("| " + " | ".join(fields) + " |")
  return "\n".join(lines) + "\n"


CSV_FIELDS = ("dataset", "table", "row", "column", "paper_map", "map_mean", "num_runs")


def render_csv(measured: Mapping[tuple[str, str], list[float]], dataset: str) -> str:
  """Long form, one line per row and column, numbers unformatted; empty where unknown."""
  out = io.StringIO()
  writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for row, paper in PAPER_ROWS:
    for c in COLUMNS:
      values = measured.get((row, c), [])
      fields = dict(
        dataset=dataset,
        table="table3",
        row=row,
        column=c,
        paper_map=paper.get(c),
        map_mean=_mean(values),
        num_runs=len(values),
      )
      writer.writerow({k: "" if v is None else v for k, v in fields.items()})
  return out.getvalue()


def report(runs: Sequence[Any]) -> list[tuple[str, str, str]]:
  """(dataset, Markdown, CSV) of Table 3 for each dataset with a multi-label run of sound or video."""
  datasets = sorted({family(r.config) for r in runs if r.task == "multi_label" and column(r.config)})
  return [(d, render_markdown(m, d), render_csv(m, d)) for d in datasets for m in [cells(runs, d)]]
