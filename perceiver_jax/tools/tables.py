"""The paper's tables from finished runs: which run fills which row, and the Markdown, CSV and plots.

A run is a directory holding `results.json` (`eval.top1` a fraction, `params`, `step`), `config.json` (the
resolved config) and optionally `metrics.jsonl`. Rows are predicates on the config: `model_name`,
`input.position_encoding` and the Perceiver's architecture choose the row, `input.permutation` the column
(`none` raw, `fixed` permuted, `random` a fresh permutation per example). Runs that share a cell (seeds)
are averaged; a cell without runs shows a dash, never a made-up number. The paper's figures are the
ImageNet ones whatever the dataset; at another dataset (digits) they are the reference, not the target.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from absl import logging
from etils import epath

from perceiver_jax.models import canonical_name
from perceiver_jax.tools import table3
from perceiver_jax.training import run_files

DASH = "—"
PERMUTATIONS = ("none", "fixed", "random")
COLUMN_TITLES = {"none": "raw", "fixed": "permuted", "random": "random perm."}
# The Perceiver's cross-attends K and latent Transformers R in a dataset's main configuration (the paper's
# 8 and 8 on ImageNet, where the ablations vary K at R = 8); any K and R elsewhere.
MAIN_PERCEIVER = {"imagenet2012": {"num_cross_attends": 8, "num_latent_transformers": 8}}

Config = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """One finished run: its directory, resolved config, results and logged metrics."""

  path: str
  config: Config
  results: Mapping[str, Any]
  metrics: Sequence[Mapping[str, Any]] = ()

  @property
  def dataset(self) -> str:
    return self.config["dataset"]["name"]

  @property
  def permutation(self) -> str:
    return self.config["input"].get("permutation", "none")

  @property
  def task(self) -> str:
    """The run's task (config `task`; runs saved before it was declared are single-label)."""
    return self.config.get("task", "single_label")

  @property
  def top1(self) -> float:
    """Eval top-1 in percent."""
    return 100.0 * float(self.results["eval"]["top1"])

  def curve(self) -> tuple[list[int], list[float]]:
    """(steps, eval top-1 in percent) from metrics.jsonl, else from the results' history."""
    points = [(m["step"], m["eval_top1"]) for m in self.metrics if "eval_top1" in m]
    if not points:
      points = [(h["step"], h["top1"]) for h in self.results.get("history", ()) if "top1" in h]
    return [int(s) for s, _ in points], [100.0 * float(t) for _, t in points]


@dataclasses.dataclass(frozen=True)
class Row:
  """A table row: its name, the paper's top-1 per column (None: not in the paper), and its runs' test."""

  name: str
  paper: Mapping[str, float | None]
  matches: Callable[[Config], bool]
  note: str = ""  # Table 2's input receptive field.


@dataclasses.dataclass(frozen=True)
class Table:
  key: str  # File stem of its CSV.
  title: str
  rows: Sequence[Row]
  columns: Sequence[str] = ("none",)  # Permutations, one measured column each.
  note_title: str = ""
  row_title: str = "model"
  ablation: bool = False  # Ablation tables are ImageNet's and shown only when one of their runs exists.


@dataclasses.dataclass(frozen=True)
class Cell:
  """The runs of one row and column: n, mean and sample standard deviation of top-1 (percent)."""

  runs: tuple[FinishedRun, ...]

  @property
  def n(self) -> int:
    return len(self.runs)

  @property
  def mean(self) -> float | None:
    return sum(r.top1 for r in self.runs) / self.n if self.runs else None

  @property
  def std(self) -> float | None:
    if self.n < 2:
      return None
    mean = self.mean
    return math.sqrt(sum((r.top1 - mean) ** 2 for r in self.runs) / (self.n - 1))


# Row predicates -------------------------------------------------------------------------------------


def _model(config: Config) -> Config:
  return config.get("model", {})


def _position(config: Config) -> str:
  return config["input"].get("position_encoding", "fourier")


def _is(model_name: str, position: str) -> Callable[[Config], bool]:
  return lambda c: canonical_name(c["model_name"]) == model_name and _position(c) == position


def _perceiver(
  cross_attends: int | None = None,
  layout: str = "interleaved",
  shared: bool = True,
  latent_transformer: bool = True,
) -> Callable[[Config], bool]:
  """A Perceiver (FF) with these ablation settings; `cross_attends=None` means the dataset's main K.

  R is the dataset's main one, except without latent Transformers, where it does not matter."""

  def matches(c: Config) -> bool:
    m = _model(c)
    k = m.get("num_cross_attends", 8)
    r = m.get("num_latent_transformers", k)  # Before R existed, each cross-attend had its own.
    main = MAIN_PERCEIVER.get(c["dataset"]["name"], {"num_cross_attends": k, "num_latent_transformers": r})
    return (
      c["model_name"] == "perceiver"
      and _position(c) == "fourier"
      and k == (cross_attends if cross_attends is not None else main["num_cross_attends"])
      and (r == main["num_latent_transformers"] or not latent_transformer)
      and m.get("cross_attend_layout", "interleaved") == layout
      and m.get("share_cross_attends", True) == shared
      and m.get("share_latent_transformers", True) == shared
      and (m.get("num_self_attends_per_block", 6) > 0) == latent_transformer
    )

  return matches


def _learned_perceiver(c: Config) -> bool:
  # The paper's learned-position Perceiver has a single cross-attend; any count is accepted here.
  m = _model(c)
  return (
    c["model_name"] == "perceiver"
    and _position(c) == "learned"
    and m.get("share_cross_attends", True)
    and m.get("share_latent_transformers", True)
    and m.get("num_self_attends_per_block", 6) > 0
  )


def _raw(top1: float) -> dict[str, float]:
  return {"none": top1}


def tables() -> list[Table]:
  """The paper's Tables 1 and 2 and its ImageNet ablations, with its figures."""
  table1 = Table(
    "table1",
    "Table 1: top-1",
    [
      Row("ResNet-50 (from the literature)", _raw(77.6), _is("resnet", "none")),
      Row("ViT-B-16 (from the literature)", _raw(77.9), _is("vit", "none")),
      Row("ResNet-50 (FF)", _raw(73.5), _is("resnet", "fourier")),
      Row("ViT-B-16 (FF)", _raw(76.7), _is("vit", "fourier")),
      Row("Transformer (64x64, FF)", _raw(57.0), _is("transformer", "fourier")),
      Row("Perceiver (FF)", _raw(78.0), _perceiver()),
    ],
  )
  table2 = Table(
    "table2",
    "Table 2: permuted pixels",
    [
      Row("ResNet-50 (FF)", {"none": 73.5, "fixed": 39.4}, _is("resnet", "fourier"), "49"),
      Row("ViT-B-16 (FF)", {"none": 76.7, "fixed": 61.7}, _is("vit", "fourier"), "256"),
      Row("Transformer (64x64, FF)", {"none": 57.0, "fixed": 57.0}, _is("transformer", "fourier"), "4,096"),
      Row("Perceiver (FF)", {"none": 78.0, "fixed": 78.0}, _perceiver(), "50,176"),
      Row("Perceiver (learned pos.)", {"none": 70.9, "fixed": 70.9}, _learned_perceiver, "50,176"),
    ],
    columns=PERMUTATIONS,
    note_title="input receptive field (paper)",
  )
  interleaved = Table(
    "ablation_cross_attends",
    "Ablation: cross-attends, interleaved with the latent Transformers",
    [
      Row(str(k), _raw(top1), _perceiver(cross_attends=k))
      for k, top1 in ((1, 76.7), (2, 76.5), (4, 76.5), (8, 78.0))
    ],
    row_title="cross-attends",
    ablation=True,
  )
  at_start = Table(
    "ablation_cross_attends_at_start",
    "Ablation: all cross-attends at the start",
    [
      Row(str(k), _raw(top1), _perceiver(cross_attends=k, layout="start"))
      for k, top1 in ((2, 76.7), (4, 75.9), (8, 73.7))
    ],
    row_title="cross-attends",
    ablation=True,
  )
  sharing = Table(
    "ablation_sharing",
    "Ablation: weight sharing (8 cross-attends)",
    [
      Row("shared", _raw(78.0), _perceiver(cross_attends=8)),
      Row("unshared", _raw(72.9), _perceiver(cross_attends=8, shared=False)),
    ],
    row_title="weights",
    ablation=True,
  )
  cross_only = Table(
    "ablation_cross_attends_only",
    "Ablation: cross-attends only, no latent Transformer",
    [
      Row(str(k), _raw(top1), _perceiver(cross_attends=k, latent_transformer=False))
      for k, top1 in ((4, 39.4), (8, 45.3))
    ],
    row_title="cross-attends",
    ablation=True,
  )
  return [table1, table2, interleaved, at_start, sharing, cross_only]


def _vit(patch_size: int) -> Callable[[Config], bool]:
  return lambda c: _is("vit", "fourier")(c) and _model(c).get("patch_size") == patch_size


def table4() -> Table:
  """The paper's Table 4 (ModelNet40): the points arranged randomly in a 2-D grid for the baselines."""
  return Table(
    "table4",
    "Table 4: point clouds, top-1",
    [
      Row("PointNet++ (from the literature)", _raw(91.9), lambda c: False),
      Row("ResNet-50 (FF)", _raw(66.3), _is("resnet", "fourier")),
      *(Row(f"ViT-B-{p} (FF)", _raw(t), _vit(p)) for p, t in ((2, 78.9), (4, 73.4), (8, 65.3), (16, 59.6))),
      Row("Transformer (44x44)", _raw(82.1), _is("transformer", "fourier")),
      Row("Perceiver", _raw(85.7), _perceiver()),
    ],
  )


def _is_points(config: Config) -> bool:
  return config["input"].get("front_end") == "points"


def tables_for(runs: Sequence[FinishedRun]) -> list[Table]:
  """Table 4 for point-cloud runs (`input.front_end="points"`), else Tables 1, 2 and the ablations."""
  return [table4()] if runs and all(_is_points(r.config) for r in runs) else tables()


ABLATION_DATASET = "imagenet2012"


# Filling and rendering ------------------------------------------------------------------------------


def fill(table: Table, runs: Iterable[FinishedRun], dataset: str) -> dict[tuple[str, str], Cell]:
  """(row name, permutation) -> the cell of `dataset`'s single-label runs that match the row."""
  runs = [r for r in runs if r.dataset == dataset and r.task == "single_label"]
  return {
    (row.name, col): Cell(tuple(r for r in runs if r.permutation == col and row.matches(r.config)))
    for row in table.rows
    for col in table.columns
  }


def _row_runs(table: Table, row: Row, cells: Mapping[tuple[str, str], Cell]) -> list[FinishedRun]:
  return [r for col in table.columns for r in cells[(row.name, col)].runs]


def _figure(value: float | None) -> str:
  return DASH if value is None else f"{value:.1f}"


def _measured(cell: Cell) -> str:
  if not cell.n:
    return DASH
  if cell.n == 1:
    return f"{cell.mean:.1f}"
  return f"{cell.mean:.1f} ± {cell.std:.1f} (n={cell.n})"


def _params(runs: Sequence[FinishedRun]) -> int | None:
  # Runs of one row differ only in seed and permutation, so in nothing that changes the count.
  counts = [int(r.results["params"]) for r in runs if "params" in r.results]
  return counts[0] if counts else None


def format_params(count: int | None) -> str:
  if count is None:
    return DASH
  return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}K"


def format_gflops(value: float | None) -> str:
  return DASH if value is None else f"{value:.4g}"


GflopsFn = Callable[[Config], float | None]


_GFLOPS_CACHE: dict[str, float | None] = {}


def config_gflops(config: Config) -> float | None:
  """Forward GFLOPs per example of a run's model (from its config.json), counted by `flops`, nothing run."""
  import ml_collections

  from perceiver_jax.tools import flops

  key = json.dumps(config, sort_keys=True)
  if key not in _GFLOPS_CACHE:  # Tracing a model takes seconds; every table asks for the same rows.
    try:
      _GFLOPS_CACHE[key] = float(flops.model_stats(ml_collections.ConfigDict(dict(config)))["gflops"])
    except (ValueError, TypeError, KeyError) as e:  # A run of an older config that no longer builds.
      logging.warning("No GFLOPs for %s: %s", config.get("model_name"), e)
      _GFLOPS_CACHE[key] = None
  return _GFLOPS_CACHE[key]


def _gflops(runs: Sequence[FinishedRun], gflops_fn: GflopsFn | None) -> float | None:
  return gflops_fn(runs[0].config) if runs and gflops_fn else None


def render_markdown(
  table: Table, cells: Mapping[tuple[str, str], Cell], dataset: str, gflops_fn: GflopsFn | None = None
) -> str:
  """The table as Markdown: the paper's and the measured top-1 per column, params and GFLOPs."""
  # A column the paper has no figure for (the random permutation) shows only the measured one.
  with_paper = [any(row.paper.get(col) is not None for row in table.rows) for col in table.columns]
  header = [table.row_title]
  for col, paper in zip(table.columns, with_paper, strict=True):
    title = COLUMN_TITLES[col] if len(table.columns) > 1 else "top-1"
    header += [f"{title}: paper", f"{title}: measured"] if paper else [f"{title}: measured"]
  if table.note_title:
    header.append(table.note_title)
  header += ["params", "GFLOPs"]
  lines = [f"### {table.title} ({dataset})", "", "| " + " | ".join(header) + " |"]
  lines.append("|" + "|".join("---" for _ in header) + "|")
  for row in table.rows:
    runs = _row_runs(table, row, cells)
    fields = [row.name]
    for col, paper in zip(table.columns, with_paper, strict=True):
      fields += [_figure(row.paper.get(col))] if paper else []
      fields.append(_measured(cells[(row.name, col)]))
    if table.note_title:
      fields.append(row.note or DASH)
    fields += [format_params(_params(runs)), format_gflops(_gflops(runs, gflops_fn))]
    lines.append("| " + " | ".join(fields) + " |")
  return "\n".join(lines) + "\n"


CSV_FIELDS = (
  "dataset",
  "table",
  "row",
  "permutation",
  "paper_top1",
  "top1_mean",
  "top1_std",
  "num_runs",
  "params",
  "gflops",
)


def render_csv(
  table: Table, cells: Mapping[tuple[str, str], Cell], dataset: str, gflops_fn: GflopsFn | None = None
) -> str:
  """The table in long form, one line per row and column, numbers unformatted; empty where unknown."""
  out = io.StringIO()
  writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for row in table.rows:
    runs = _row_runs(table, row, cells)
    params, gflops = _params(runs), _gflops(runs, gflops_fn)
    for col in table.columns:
      cell = cells[(row.name, col)]
      values = dict(
        dataset=dataset,
        table=table.key,
        row=row.name,
        permutation=col,
        paper_top1=row.paper.get(col),
        top1_mean=cell.mean,
        top1_std=cell.std,
        num_runs=cell.n,
        params=params,
        gflops=gflops,
      )
      writer.writerow({k: "" if v is None else v for k, v in values.items()})
  return out.getvalue()


def row_name(run: FinishedRun) -> str | None:
  """The first Table 1 or 2 row (Table 4 for a point-cloud run) that `run` belongs to, or None."""
  for table in tables_for([run]):
    if table.ablation:
      continue
    for row in table.rows:
      if row.matches(run.config):
        return row.name
  return None


# Runs on disk ---------------------------------------------------------------------------------------


def load_finished_run(path: str) -> FinishedRun:
  """The run in directory `path`; run_files.RunFileError names a file that is unreadable or lacks a field."""
  root = epath.Path(path)
  results = run_files.read_json(root / run_files.RESULTS)
  config = run_files.read_json(root / run_files.CONFIG)
  try:
    # The task's headline metric (training/tasks.py): top-1, or the mAP of a multi-label run.
    headline = "mAP" if config.get("task", "single_label") == "multi_label" else "top1"
    float(results["eval"][headline]), int(results["params"]), int(results["step"])
    str(config["model_name"]), str(config["dataset"]["name"])
  except (KeyError, TypeError, ValueError) as e:
    raise run_files.RunFileError(
      f"{root} is not a finished run: its results.json or config.json lacks {e} (or holds a bad value)."
    ) from e
  metrics = run_files.read_jsonl(root / run_files.METRICS)
  return FinishedRun(path, config, results, tuple(metrics))


# Directories of a run that hold no runs: not searched (on gs:// every listing is a request).
_NOT_RUNS = frozenset({"checkpoints", "corrupt_checkpoints", "tensorboard", "plugins"})


def _run_directories(root: epath.Path) -> Iterator[epath.Path]:
  """Every directory under `root` (itself included) that holds results.json and config.json.

  Walked with `iterdir`, which joins names onto `root` on every filesystem; epath's `walk` through gcsfs
  (EPATH_USE_TF=false) yields bucket-relative paths without their `gs://`.
  """
  children = list(root.iterdir())
  names = {child.name for child in children}
  if run_files.RESULTS in names and run_files.CONFIG in names:
    yield root
  for child in sorted(children):
    if child.name not in _NOT_RUNS and child.is_dir():
      yield from _run_directories(child)


def find_runs(roots: Iterable[str], missing_ok: bool = False) -> list[FinishedRun]:
  """Every finished run (a directory with results.json and config.json) under `roots`, sorted by path.

  A run that cannot be read is skipped with a warning naming it.

  Raises:
    FileNotFoundError: a root is not a directory (unless `missing_ok`: then it holds no runs).
  """
  paths = set()
  for root in roots:
    root_path = epath.Path(root)
    if not root_path.is_dir() and not missing_ok:
      raise FileNotFoundError(f"--runs={root} is not a directory; pass the directory that holds the runs.")
    if not root_path.is_dir():
      continue
    paths.update(os.fspath(d) for d in _run_directories(root_path))
  runs = []
  for path in sorted(paths):
    try:
      runs.append(load_finished_run(path))
    except run_files.RunFileError as e:
      logging.warning("Skipping the run in %s: %s", path, e)
  return runs


def report(
  runs: Sequence[FinishedRun], gflops_fn: GflopsFn | None = None
) -> list[tuple[str, Table, str, str]]:
  """(dataset, table, Markdown, CSV) for Tables 1 and 2 of every dataset with runs (ImageNet if none) and
  for each ablation table with at least one ImageNet run."""
  # Datasets of multi-label runs only (sound, video) have Table 3 (table3.py), not Tables 1 and 2.
  datasets = sorted({r.dataset for r in runs if r.task == "single_label"}) or (
    [] if runs else [ABLATION_DATASET]
  )
  out = []
  for dataset in datasets:
    for table in tables_for([r for r in runs if r.dataset == dataset]):
      cells = fill(table, runs, dataset)
      if table.ablation and (dataset != ABLATION_DATASET or not any(c.n for c in cells.values())):
        continue
      out.append(
        (
          dataset,
          table,
          render_markdown(table, cells, dataset, gflops_fn),
          render_csv(table, cells, dataset, gflops_fn),
        )
      )
  return out


def plot_curves(runs: Sequence[FinishedRun], path: str, title: str = "") -> None:
  """Eval top-1 against step, one panel per permutation, one line per run coloured by its row."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = sorted({row_name(r) or r.config["model_name"] for r in runs})
  colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
  fig, axes = plt.subplots(1, len(PERMUTATIONS), figsize=(5 * len(PERMUTATIONS), 4), sharey=True)
  for ax, col in zip(axes, PERMUTATIONS, strict=True):
    labelled = set()
    for run in runs:
      if run.permutation != col:
        continue
      steps, top1 = run.curve()
      if not steps:
        continue
      name = row_name(run) or run.config["model_name"]
      ax.plot(steps, top1, color=colours[name], marker=".", label=None if name in labelled else name)
      labelled.add(name)
    ax.set_title(COLUMN_TITLES[col])
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if labelled:
      ax.legend(fontsize="small")
  axes[0].set_ylabel("eval top-1 (%)")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  epath.Path(path).write_bytes(buffer.getvalue())
  plt.close(fig)


def write_report(runs: Sequence[FinishedRun], out_dir: str, gflops_fn: GflopsFn | None = None) -> str:
  """Writes tables.md, one CSV per table and dataset, and curves_<dataset>.png; returns the Markdown."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  parts = [
    f"# The paper's tables, measured\n\n{len(runs)} runs. Top-1 in percent on the eval split; measured: the "
    f"mean ± sample standard deviation (n runs, seeds) where several runs share a cell, {DASH} where none "
    "exists. Params and GFLOPs (forward, per example, 2 x multiply-adds) are those of the runs' models.\n"
  ]
  for dataset, table, markdown, table_csv in report(runs, gflops_fn):
    parts.append(markdown)
    (out / f"{table.key}_{dataset}.csv").write_text(table_csv)
  for dataset, markdown, table_csv in table3.report(runs):  # AudioSet's mAP (Table 3), from sound runs.
    parts.append(markdown)
    (out / f"table3_{dataset}.csv").write_text(table_csv)
  for dataset in sorted({r.dataset for r in runs}):
    plot_curves([r for r in runs if r.dataset == dataset], os.fspath(out / f"curves_{dataset}.png"), dataset)
  markdown = "\n".join(parts)
  (out / "tables.md").write_text(markdown)
  return markdown
