"""Sweeps: axes, points, names and commands; scripts/sweep.py printing and running a 2x2 sweep."""

import json
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, child_env

from perceiver_jax.tools import sweep
from perceiver_jax.training import checkpoint


def test_parse_axis_keeps_bracketed_and_quoted_commas_together():
  assert sweep.parse_axis("num_cross_attends=1,2,4,8") == ("num_cross_attends", ("1", "2", "4", "8"))
  assert sweep.parse_axis(" seed = 0 , 1 ") == ("seed", ("0", "1"))
  with pytest.raises(ValueError, match="holds a comma"):
    sweep.parse_axis("decay_epochs=(84,102),(90,)")
  for bad in ("seed", "seed=", "=1,2", "seed=1,,2"):
    with pytest.raises(ValueError, match="must read key=value1,value2"):
      sweep.parse_axis(bad)
  assert sweep._split_top_level("1,(2,3),'a,b',[4]") == ["1", "(2,3)", "'a,b'", "[4]"]


def test_plan_is_the_cross_product_with_one_workdir_per_point():
  axes = [sweep.parse_axis("num_cross_attends=1,2,4"), sweep.parse_axis("seed=0,1")]
  runs = sweep.plan("configs/imagenet.py:permuted", axes, "/runs", ["--config.train.num_epochs=1"])
  assert len(runs) == 6 and len({r.workdir for r in runs}) == 6
  assert runs[5] == sweep.SweepRun(
    "num_cross_attends=4,seed=1",
    "/runs/num_cross_attends=4,seed=1",
    (
      "--config=configs/imagenet.py:permuted,num_cross_attends=4,seed=1",
      "--workdir=/runs/num_cross_attends=4,seed=1",
      "--config.train.num_epochs=1",
    ),
  )
  assert sweep.plan("configs/digits.py", axes[1:], "r")[0].args[0] == "--config=configs/digits.py:seed=0"
  assert sweep.run_name([("input.position_encoding", "learned"), ("x", "a/b c")]) == (
    "input.position_encoding=learned,x=a_b_c"
  )
  with pytest.raises(ValueError, match="repeat a key"):
    sweep.points([("seed", ("0",)), ("seed", ("1",))])


def test_commands_of_each_launcher():
  runs = sweep.plan("configs/digits.py", [("seed", ("3",))], "R")
  args = ["--config=configs/digits.py:seed=3", "--workdir=R/seed=3"]
  assert sweep.commands(runs, "print", "experiments/train.py") == [["python", "experiments/train.py", *args]]
  assert sweep.commands(runs, "tpu_pod", "t.py") == [["scripts/launch_tpu_pod.sh", *args]]
  assert sweep.commands(runs, "slurm", "t.py") == [
    ["sbatch", "--job-name=seed=3", "scripts/slurm_multinode_gpu.sbatch", *args]
  ]
  with pytest.raises(ValueError, match="launcher='ssh' must be one of"):
    sweep.commands(runs, "ssh", "t.py")


def test_validate_names_the_run_with_a_bad_override(monkeypatch):
  monkeypatch.chdir(ROOT)
  runs = sweep.plan("configs/digits.py:runlocal", [("num_latent", ("4",))], "R")
  with pytest.raises(
    ValueError, match="Run num_latent=4: Config override 'num_latent' names no config field"
  ):
    sweep.validate(runs)
  sweep.validate(sweep.plan("configs/digits.py:runlocal", [("num_latents", ("4",))], "R"))


def sweep_command(root, launcher, *extra):
  return [
    sys.executable,
    "scripts/sweep.py",
    f"--config=configs/digits.py:{TINY}",
    "--sweep=seed=0,1",
    "--sweep=dataset.split_seed=0,1",
    f"--workdir_root={root}",
    f"--launcher={launcher}",
    *extra,
  ]


@pytest.mark.slow
def test_print_launcher_prints_one_command_per_point(tmp_path):
  done = subprocess.run(
    sweep_command(tmp_path, "print", "--config.train.num_steps=5"),
    cwd=ROOT,
    env=child_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  assert len(lines) == 4
  for line, (seed, split) in zip(lines, [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True):
    name = f"seed={seed},dataset.split_seed={split}"
    assert shlex.split(line) == [
      "python",
      "experiments/train.py",
      f"--config=configs/digits.py:{TINY},{name}",
      f"--workdir={tmp_path / name}",
      "--config.train.num_steps=5",
    ]
  assert not any(tmp_path.iterdir())  # Printing runs nothing.


@pytest.mark.slow
def test_local_launcher_trains_a_2x2_sweep(tmp_path, cache_dir):
  cache = cache_dir  # Shared with test_checkpoint.py's runs of the same program.
  cmd = sweep_command(tmp_path, "local", "--", "--notensorboard")
  done = subprocess.run(cmd, cwd=ROOT, env=child_env(cache), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  checksums = {}
  for seed in (0, 1):
    for split in (0, 1):
      workdir = tmp_path / f"seed={seed},dataset.split_seed={split}"
      results = json.loads((workdir / "results.json").read_text())
      config = checkpoint.load_config(str(workdir))
      assert (config.seed, config.dataset.split_seed) == (seed, split)
      assert results["step"] == 12 and results["eval"]["count"] == 359
      checksums[seed, split] = results["params_checksum"]
  assert len(set(checksums.values())) == 4  # The seed sets the initial parameters, the split the data.

  again = subprocess.run(cmd, cwd=ROOT, env=child_env(cache), capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and again.stdout.count("finished already") == 4
