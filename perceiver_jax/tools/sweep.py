"""Sweeps: the cross product of config overrides, one run per point, and the commands that launch them.

A sweep axis is `key=v1,v2,...` with `key` a config field as `config_args` knows it (a unique leaf name
such as `num_cross_attends` or a dotted path such as `optimizer.learning_rate`). Each point of the cross
product of the axes is one run: its overrides are appended to the config argument
(`configs/imagenet.py:permuted,num_cross_attends=4,seed=1`) and its workdir is named after them
(`<root>/num_cross_attends=4,seed=1`). Launchers: `local` trains the runs one after another in
subprocesses, `tpu_pod` one after another on a Cloud TPU pod (`scripts/launch_tpu_pod.sh`, each run on
every host), `print` prints their commands and `slurm` the `sbatch` commands of a SLURM cluster
(`scripts/slurm_multinode_gpu.sbatch`), one job each.
"""

from __future__ import annotations

import functools
import itertools
import os
import pathlib
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from etils import epath

from perceiver_jax import cli

LAUNCHERS = ("local", "print", "tpu_pod", "slurm")
TPU_POD_SCRIPT = "scripts/launch_tpu_pod.sh"
SLURM_SCRIPT = "scripts/slurm_multinode_gpu.sbatch"


class SweepRun(NamedTuple):
  """One point of a sweep: its name, workdir and the arguments of the train script."""

  name: str
  workdir: str
  args: tuple[str, ...]


def _split_top_level(text: str) -> list[str]:
  """Splits at commas outside brackets and quotes: '1,(2,3),"a,b"' -> ['1', '(2,3)', '"a,b"']."""
  parts, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(text):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return [p.strip() for p in parts]


def parse_axis(spec: str) -> tuple[str, tuple[str, ...]]:
  """'num_cross_attends=1,2,4,8' -> ('num_cross_attends', ('1', '2', '4', '8'))."""
  key, sep, values = spec.partition("=")
  key = key.strip()
  parsed = tuple(_split_top_level(values)) if sep else ()
  if not key or not parsed or not all(parsed):
    raise ValueError(f"Sweep axis {spec!r} must read key=value1,value2,... with non-empty values.")
  for value in parsed:
    # The config argument is itself comma-separated, so a value may not hold a comma.
    if "," in value:
      raise ValueError(
        f"Sweep value {value!r} of {key!r} holds a comma, which the config argument cannot carry; "
        "sweep over a variant word or a scalar field instead."
      )
  return key, parsed


def points(axes: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[tuple[str, str], ...]]:
  """The cross product of the axes, the first axis varying slowest: ((key, value), ...) per point."""
  keys = [key for key, _ in axes]
  if len(set(keys)) != len(keys):
    raise ValueError(f"Sweep axes repeat a key: {keys}.")
  return [tuple(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in axes))]


def run_name(point: Sequence[tuple[str, str]]) -> str:
  """'num_cross_attends=4,seed=1': the point's overrides, usable as a directory name."""
  name = ",".join(f"{key}={value}" for key, value in point)
  return "".join(c if c.isalnum() or c in "=,.-_+" else "_" for c in name)


def plan(
  config: str,
  axes: Sequence[tuple[str, Sequence[str]]],
  workdir_root: str,
  extra_args: Sequence[str] = (),
) -> list[SweepRun]:
  """The runs of a sweep of `config` ('path.py' or 'path.py:variants') over `axes`.

  Args:
    config: the `--config` of every run, before the sweep's overrides.
    axes: (key, values) per sweep axis, as `parse_axis` returns them.
    workdir_root: directory under which each run gets its own workdir.
    extra_args: further arguments for every run (e.g. `--config.train.num_steps=100`).
  """
  path, _, base = config.partition(":")
  runs = []
  for point in points(axes):
    arg = ",".join(([base] if base else []) + [f"{k}={v}" for k, v in point])
    name = run_name(point)
    workdir = os.fspath(epath.Path(workdir_root) / name)
    runs.append(SweepRun(name, workdir, (f"--config={path}:{arg}", f"--workdir={workdir}", *extra_args)))
  return runs


def validate(runs: Sequence[SweepRun]) -> None:
  """Builds every run's config and model before anything is launched, so that a typo in a key or a
  value, or a model that cannot be built (a shape that does not divide), fails here rather than in a job.

  The config gets the run's `--config.a.b=v` overrides as well; the model's parameters and optimizer state
  are built through `jax.eval_shape`, which traces the model's construction without computing anything.
  """
  # Imported here: planning and printing a sweep need no JAX.
  import jax

  from perceiver_jax.training import build, optim, train

  for run in runs:
    spec = next(a for a in run.args if a.startswith("--config="))[len("--config=") :]
    try:
      # As experiments/train.py reads its flags: the file and its words, then the `--config.a.b=v` overrides.
      built = cli.load_config(spec, cli.split_overrides(run.args)[1])
      train.validate_config(built)
      model = build.make_model(built)
      optimizer, _ = optim.make_optimizer(built, 1, 1)
      jax.eval_shape(functools.partial(train.init_state, built, model, optimizer))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      raise ValueError(f"Run {run.name}: {e}") from e


def commands(
  runs: Sequence[SweepRun], launcher: str, train_script: str, python: str = "python"
) -> list[list[str]]:
  """The command line of each run for `launcher` ('local' and 'print' run `train_script` directly)."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"launcher={launcher!r} must be one of {LAUNCHERS}.")
  if launcher == "tpu_pod":
    return [[TPU_POD_SCRIPT, *run.args] for run in runs]
  if launcher == "slurm":
    return [["sbatch", f"--job-name={run.name}", SLURM_SCRIPT, *run.args] for run in runs]
  return [[python, train_script, *run.args] for run in runs]


def run_local(
  runs: Sequence[SweepRun],
  cmds: Sequence[Sequence[str]],
  echo: Callable[[str], None] = print,
) -> list[str]:
  """Trains the runs one after another; returns the names of those that failed.

  A run whose results.json exists is skipped; an unfinished one resumes from its checkpoints. SIGTERM
  is passed on to the run in progress (which saves and stops), and the sweep stops after it.
  """
  failed, stopping, current = [], False, None

  def forward(signum, frame):
    nonlocal stopping
    del frame
    stopping = True
    if current is not None and current.poll() is None:
      current.send_signal(signum)

  previous = signal.signal(signal.SIGTERM, forward)
  try:
    for run, cmd in zip(runs, cmds, strict=True):
      if stopping:
        break
      if (epath.Path(run.workdir) / "results.json").exists():  # A gs:// workdir too.
        echo(f"# {run.name}: finished already ({run.workdir}/results.json)")
        continue
      echo(shlex.join(cmd))
      current = subprocess.Popen(list(cmd))
      if current.wait() != 0:
        failed.append(run.name)
        echo(f"# {run.name}: exit status {current.returncode}")
  finally:
    signal.signal(signal.SIGTERM, previous)
  return failed


def main(
  config: str,
  sweep_specs: Sequence[str],
  workdir_root: str,
  launcher: str,
  train_script: str,
  extra_args: Sequence[str] = (),
  echo: Callable[[str], None] = print,
) -> int:
  """Plans, validates and launches (or prints) a sweep; the exit status for `scripts/sweep.py`.

  `local` and `tpu_pod` train the runs one after another (finished ones skipped) and return 1 when any
  failed (for `tpu_pod`: on any host); `print` and `slurm` print one command per run.
  """
  runs = plan(config, [parse_axis(s) for s in sweep_specs], workdir_root, extra_args)
  validate(runs)
  cmds = commands(runs, launcher, train_script, python=sys.executable if launcher == "local" else "python")
  if launcher in ("print", "slurm"):
    for cmd in cmds:
      echo(shlex.join(cmd))
    return 0
  if launcher == "tpu_pod" and os.environ.get("DETACH", "0") == "1":
    raise ValueError(
      "DETACH=1 would start every run of the sweep on the pod at once; run the sweep without it (in tmux or "
      "under nohup), so that each run holds the pod until it ends."
    )
  if launcher == "tpu_pod" and not pathlib.Path(TPU_POD_SCRIPT).is_file():
    raise FileNotFoundError(f"{TPU_POD_SCRIPT} is not here; run the sweep from the repository's root.")
  failed = run_local(runs, cmds, echo)
  if failed:
    echo(f"# {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")
  return 1 if failed else 0
