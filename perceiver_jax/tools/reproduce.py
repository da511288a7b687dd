"""The miniature reproductions: every Table 2 row at digits scale (or Table 4's at shapes scale), 3 seeds,
then the tables.

Five models (small ResNet, ViT on 2x2 patches, Transformer over all 64 pixels, Perceiver with Fourier
features, Perceiver with learned positions) on raw, fixed-permuted and randomly permuted digits, three seeds
each: 45 runs, each in `workdir/<model>/<permutation>/seed<k>`. A run whose results.json exists is not
trained again, so an interrupted suite resumes where it stopped. The step count comes from the config's
`reproduce` variant, sized so that the 45 runs fit in 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from perceiver_jax.tools import tables
from perceiver_jax.training import run_files

# (directory name, variant words) of the models and permutations of a suite; "" is the config's default.
SUITES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
  "digits": (
    (
      ("resnet", "resnet"),
      ("vit", "vit"),
      ("transformer", "transformer"),
      ("perceiver", ""),
      ("perceiver_learned_pos", "learned_pos"),
    ),
    (("raw", ""), ("permuted", "permuted"), ("random", "permuted_random")),
  ),
  # Table 4 at shapes scale (configs/shapes.py): the grid baselines and the Perceiver on raw clouds.
  "shapes": (
    (
      ("resnet", "resnet"),
      *((f"vit{p}", f"vit{p}") for p in (2, 4, 8, 16)),
      ("transformer", "transformer"),
      ("perceiver", ""),
    ),
    (("raw", ""),),
  ),
}

GetConfig = Callable[[str], ml_collections.ConfigDict]
TrainFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]


def suite_runs(
  suite: str, seeds: Sequence[int] = (0, 1, 2), models: Sequence[str] | None = None, extra: str = ""
) -> list[tuple[str, str]]:
  """(run directory relative to the workdir, config arg) of every run of `suite`."""
  if suite not in SUITES:
    raise ValueError(f"suite={suite!r} is unknown; known suites: {', '.join(sorted(SUITES))}.")
  model_words, permutation_words = SUITES[suite]
  known = [name for name, _ in model_words]
  if models is not None and set(models) - set(known):
    raise ValueError(f"models={list(models)} names unknown models; known: {', '.join(known)}.")
  runs = []
  for model, model_word in model_words:
    if models is not None and model not in models:
      continue
    for permutation, permutation_word in permutation_words:
      for seed in seeds:
        words = ["reproduce", model_word, permutation_word, f"seed={seed}", extra]
        runs.append((f"{model}/{permutation}/seed{seed}", ",".join(w for w in words if w)))
  return runs


def run_suite(
  suite: str,
  workdir: str,
  get_config: GetConfig,
  train_fn: TrainFn | None = None,
  seeds: Sequence[int] = (0, 1, 2),
  models: Sequence[str] | None = None,
  extra: str = "",
  gflops_fn: tables.GflopsFn | None = None,
) -> str:
  """Trains every run of `suite` not yet finished, then writes the tables to `workdir/tables`.

  Args:
    suite: a key of `SUITES`.
    workdir: where the runs and the tables go.
    get_config: the suite's `get_config(arg)` (configs/digits.py for `digits`).
    train_fn: `train_and_evaluate(config, workdir)`; the project's trainer by default.
    seeds: the seeds of every row.
    models: a subset of the suite's model names, or None for all.
    extra: config arg appended to every run's, such as `num_steps=20` for a smoke test.
    gflops_fn: GFLOPs of a run's config for the tables, or None for dashes.

  Returns:
    The tables as Markdown.
  """
  if train_fn is None:
    from perceiver_jax.training.train import train_and_evaluate as train_fn
  runs = suite_runs(suite, seeds, models, extra)
  start = time.perf_counter()
  for i, (name, arg) in enumerate(runs):
    run_dir = os.fspath(epath.Path(workdir) / name)
    if (epath.Path(run_dir) / run_files.RESULTS).exists():
      logging.info("[%d/%d] %s: done already, skipped.", i + 1, len(runs), name)
      continue
    logging.info("[%d/%d] %s: training with arg %r.", i + 1, len(runs), name, arg)
    results = train_fn(get_config(arg), run_dir)
    if results.get("preempted"):  # Its checkpoint is saved: the same command resumes it.
      logging.warning(
        "[%d/%d] %s: preempted at step %d; run the same command again to resume. Tables of the runs "
        "finished so far follow.",
        i + 1,
        len(runs),
        name,
        results["step"],
      )
      break
    logging.info(
      "[%d/%d] %s: top-1 %.4f; %.0f s since the suite started.",
      i + 1,
      len(runs),
      name,
      results["eval"]["top1"],
      time.perf_counter() - start,
    )
  finished = tables.find_runs([os.fspath(epath.Path(workdir) / name) for name, _ in runs], missing_ok=True)
  return tables.write_report(finished, os.fspath(epath.Path(workdir) / "tables"), gflops_fn)
