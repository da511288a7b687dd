"""Checkpoints: exact resume after SIGTERM, fallback past a corrupt checkpoint, NaN never saved, evaluate.py.

The runs are subprocesses with 2 CPU devices (not the 8 of this process) sharing a persistent compilation
cache, so that only the first of them compiles; they train a tiny Perceiver for 12 steps, checkpointing
every 4. A helper entry point wraps `data.train_batches` to slow steps down (so that SIGTERM lands mid-run)
or to feed NaN images at one step; it changes nothing else.
"""

import gc
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, TINY, child_env, run, steps, train_command

from perceiver_jax.training import checkpoint, parallel, train


def checksum_logged(log: str) -> list[str]:
  return re.findall(r"params_checksum ([0-9a-f]{64})", log)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted run: its workdir and results."""
  workdir = tmp_path_factory.mktemp("reference")
  done = run(train_command(workdir, f"--config=configs/digits.py:{TINY}"), child_env(cache_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert checksum_logged(done.stderr) == [results["params_checksum"]]
  return workdir, results


def test_params_checksum_is_sha256_of_float32_bytes_in_sorted_path_order():
  params = {
    "net/linear": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)},
    "net/head": {"w": jnp.full((2,), 0.5, jnp.bfloat16)},  # Exactly representable: cast to float32 first.
  }
  # Sorted paths: net/head/w, net/linear/b, net/linear/w.
  expected = hashlib.sha256(
    np.full(2, 0.5, "<f4").tobytes() + np.ones(3, "<f4").tobytes() + np.arange(6, dtype="<f4").tobytes()
  ).hexdigest()
  assert checkpoint.params_checksum(params) == expected
  reordered = {"net/linear": {"b": params["net/linear"]["b"], "w": params["net/linear"]["w"]}, **params}
  assert checkpoint.params_checksum(reordered) == expected
  nudged = jax.tree.map(lambda x: x, params)
  nudged["net/linear"]["b"] = np.nextafter(np.ones(3, np.float32), 2)
  assert checkpoint.params_checksum(nudged) != expected


def test_config_json_round_trip(config_loader):
  for name, arg in (("digits", "runlocal"), ("imagenet", "permuted")):
    config = config_loader(name, arg)
    back = checkpoint.config_from_json(config.to_json_best_effort())
    assert back.to_dict() == config.to_dict()  # Tuples stay tuples; the data_dir placeholder is None.
    assert back.dataset.data_dir is None
    back.dataset.data_dir = "/data"  # A None field takes any type.


def test_check_finite_names_the_bad_parts():
  state = {"params": {"a": jnp.ones(3), "b": jnp.array([1.0, jnp.nan])}, "step": jnp.int32(3)}
  with pytest.raises(FloatingPointError, match=r"after step 7 \(in params/b\)"):
    checkpoint.check_finite(state, 7)
  checkpoint.check_finite({"params": {"a": jnp.ones(3)}, "step": jnp.int32(3)}, 7)


def test_preemption_watcher_turns_sigterm_into_a_stop_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with checkpoint.PreemptionWatcher(parallel.make_mesh()) as watcher:
    assert not watcher.stop_requested()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # The handler runs in the main thread at the next bytecode boundary.
    assert watcher.stop_requested()
  assert signal.getsignal(signal.SIGTERM) is before


def test_load_run_of_a_missing_or_unfinished_workdir_says_so(tmp_path, config_loader):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    train.load_run(str(tmp_path / "nothing"))
  (tmp_path / "config.json").write_text(config_loader("digits", "runlocal").to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="No readable checkpoint"):
    train.load_run(str(tmp_path))


def test_reading_checkpoints_joins_no_barrier_of_the_other_processes(tmp_path, monkeypatch):
  """Process 0 alone reads the config saved with the checkpoints (check_resume without config.json): a
  read-only manager must not wait at an orbax barrier that the other processes never reach."""
  import orbax.checkpoint.checkpoint_manager as orbax_manager

  state = {"w": jnp.arange(3.0)}
  with checkpoint.make_manager(str(tmp_path)) as manager:
    checkpoint.save(manager, 1, state, {checkpoint.CONFIG: {"seed": 0}})
  barriers = []
  monkeypatch.setattr(orbax_manager.multihost, "sync_global_processes", lambda key, **_: barriers.append(key))
  assert checkpoint.saved_config(str(tmp_path)) == {"seed": 0}
  assert barriers == []


def test_damaged_step_metadata_is_told_from_a_checkpoint_saved_before_checksums(tmp_path, caplog):
  """A damaged `_CHECKPOINT_METADATA` used to hide the checksum: the arrays were restored unchecked."""
  import orbax.checkpoint as ocp

  target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
  old, new = tmp_path / "old", tmp_path / "new"
  with checkpoint.make_manager(str(old), keep=3) as manager:  # Saved as before checksums were recorded.
    manager.save(1, args=ocp.args.StandardSave({"w": jnp.arange(3.0)}))
  with checkpoint.make_manager(str(new), keep=3) as manager:
    for step in (1, 2):
      checkpoint.save(manager, step, {"w": jnp.arange(3.0) + step})
  assert json.loads((new / "checkpoints" / checkpoint.CHECKSUMS_SINCE).read_text()) == {"since_step": 1}
  metadata = new / "checkpoints" / "2" / "_CHECKPOINT_METADATA"
  text = metadata.read_text()
  for damaged in (text[: len(text) // 2], text.replace(checkpoint.CHECKSUM, "state_sha2xx")):
    metadata.write_text(damaged)  # Torn, or readable without the checksum: damaged either way.
    caplog.clear()
    with checkpoint.make_manager(str(new), read_only=True) as manager:
      state, step = checkpoint.restore_latest(manager, target)
    assert step == 1 and float(state["w"][0]) == 1.0
    warned = [r.getMessage() for r in caplog.records if "Checkpoint of step 2" in r.getMessage()]
    assert warned and "is damaged" in warned[0] and "_CHECKPOINT_METADATA" in warned[0], warned
  with checkpoint.make_manager(str(old), read_only=True) as manager:
    state, step = checkpoint.restore_latest(manager, target)
  assert step == 1 and float(state["w"][2]) == 2.0
  assert any("saved before checksums were recorded" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_sigterm_mid_run_then_restart_equals_uninterrupted_run(reference, tmp_path, cache_dir):
  ref_dir, ref = reference
  workdir = tmp_path / "run"
  cmd = train_command(workdir, f"--config=configs/digits.py:{TINY}")
  log = open(tmp_path / "log", "w")
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=child_env(cache_dir, TEST_SLOW_FROM=4), stdout=subprocess.PIPE, stderr=log, text=True
  )
  try:
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "4").exists():  # Renamed into place once complete.
      assert proc.poll() is None and time.time() < deadline, (tmp_path / "log").read_text()[-3000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  stderr = (tmp_path / "log").read_text()
  assert proc.returncode == 0, stderr[-3000:]
  stopped = int(re.search(r"Preempted: checkpoint of step (\d+) saved", stdout).group(1))
  assert 4 <= stopped < 12 and steps(workdir)[-1] == stopped
  assert f"saved the checkpoint of step {stopped}" in stderr
  assert not (workdir / "results.json").exists()

  done = run(train_command(workdir, f"--config=configs/digits.py:{TINY}"), child_env(cache_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Resuming from the checkpoint of step {stopped}" in done.stderr
  results = json.loads((workdir / "results.json").read_text())
  assert results["params_checksum"] == ref["params_checksum"]
  assert results["eval"] == ref["eval"]
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in logged if "train_loss" in m] == [4, 8, 12]  # None twice after the restart.


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, cache_dir):
  ref_dir, ref = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  (workdir / "results.json").unlink()
  assert steps(workdir) == [4, 8, 12]
  data_files = [
    p for p in (workdir / "checkpoints" / "12").rglob("*") if p.is_file() and p.parent.name == "d"
  ]
  assert data_files
  for path in data_files:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

  done = run(train_command(workdir, f"--config=configs/digits.py:{TINY}"), child_env(cache_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  # An absl warning line: W<date> <time> <thread> checkpoint.py:<line>] Checkpoint of step 12 ...
  assert re.search(r"^W.*\] Checkpoint of step 12 in \S+ is unreadable \(\w+Error: ", done.stderr, re.M)
  assert "Event loop is closed" not in done.stderr  # One warning, no wall of asyncio tracebacks.
  assert "Traceback" not in done.stderr
  assert "Resuming from the checkpoint of step 8" in done.stderr
  assert (workdir / "corrupt_checkpoints" / "12").is_dir()
  results = json.loads((workdir / "results.json").read_text())
  assert results["params_checksum"] == ref["params_checksum"]
  # Step 12 was trained and saved again, readable this time.
  run12 = train.load_run(str(workdir))
  assert run12.step == 12 and checkpoint.params_checksum(run12.state.params) == ref["params_checksum"]


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(reference, tmp_path, cache_dir):
  ref_dir, _ = reference
  workdir = tmp_path / "run"
  # No log step before 12: the check before the save at step 8 must catch the NaN of step 6.
  cmd = train_command(workdir, f"--config=configs/digits.py:{TINY}", "--config.train.log_every=100")
  done = run(cmd, child_env(cache_dir, TEST_NAN_AT=5))
  assert done.returncode != 0
  assert (
    "error: Non-finite training loss nan at step 6; the last checkpoint, of step 4, is kept" in done.stderr
  ), done.stderr[-3000:]
  assert steps(workdir) == [4] and not (workdir / "results.json").exists()
  good = train.load_run(str(workdir))
  assert good.step == 4
  ref4 = train.load_run(str(ref_dir), step=4)
  assert checkpoint.params_checksum(good.state.params) == checkpoint.params_checksum(ref4.state.params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good.state))


@pytest.mark.slow
def test_evaluate_script_reproduces_the_final_eval(reference, tmp_path, cache_dir):
  ref_dir, ref = reference
  done = run([sys.executable, "experiments/evaluate.py", f"--workdir={ref_dir}"], child_env(cache_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  saved = json.loads((ref_dir / "eval_results.json").read_text())
  assert saved == json.loads(done.stdout)
  assert saved["step"] == 12 and saved["eval"] == ref["eval"]
  assert saved["params_checksum"] == ref["params_checksum"]

  missing = run(
    [sys.executable, "experiments/evaluate.py", f"--workdir={tmp_path / 'nothing'}"], child_env(cache_dir)
  )
  assert missing.returncode != 0
  assert "error: No run in workdir" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_ctrl_c_saves_and_later_signals_cannot_kill_the_save(tmp_path, cache_dir):
  """Ctrl-C stops like SIGTERM; a cluster's repeated SIGTERMs during the save are logged, not fatal."""
  workdir = tmp_path / "run"
  cmd = train_command(workdir, f"--config=configs/digits.py:{TINY}")
  log = tmp_path / "log"
  with open(log, "w") as err:
    proc = subprocess.Popen(
      cmd,
      cwd=ROOT,
      env=child_env(cache_dir, TEST_SLOW_FROM=3, TEST_DELAY=0.3),
      stdout=subprocess.PIPE,
      stderr=err,
      text=True,
    )
  try:
    deadline = time.time() + 240
    while "step 4/12" not in log.read_text():
      assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None and time.time() < deadline:  # SIGTERM every 20 ms until it exits.
      proc.send_signal(signal.SIGTERM)
      time.sleep(0.02)
    stdout = proc.communicate(timeout=60)[0]
  finally:
    proc.kill()
  stderr = log.read_text()
  assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
  stopped = int(re.search(r"Preempted: checkpoint of step (\d+) saved", stdout).group(1))
  assert "Received SIGINT: saving a checkpoint" in stderr and "Received SIGTERM again: still saving" in stderr
  assert stderr.index("Received SIGTERM again") < stderr.index(f"saved the checkpoint of step {stopped}")
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name != checkpoint.CHECKSUMS_SINCE)
  assert names == ["4", str(stopped)]  # No unfinished checkpoint left.
  assert not (workdir / "lock").exists()
  assert train.load_run(str(workdir)).step == stopped


def test_asyncio_reports_of_orbax_reads_left_behind_are_dropped_and_others_kept():
  """A failed restore abandons its other reads; asyncio reports each whenever it is collected."""
  import asyncio
  import logging

  reports = []

  class Keep(logging.Handler):
    def emit(self, record):
      reports.append(record.getMessage().splitlines()[0])

  async def ours():
    raise ValueError("not orbax's")

  scope = {}  # A coroutine compiled as if from a file of orbax's.
  exec(compile("async def read():\n  raise ValueError('read')\n", "/x/orbax/serialization.py", "exec"), scope)  # noqa: S102
  handler = Keep()
  logging.getLogger("asyncio").addHandler(handler)
  try:
    for coroutine in (scope["read"], ours):
      loop = asyncio.new_event_loop()
      task = loop.create_task(coroutine())
      loop.run_until_complete(asyncio.sleep(0.01))
      loop.close()
      del task
      gc.collect()
  finally:
    logging.getLogger("asyncio").removeHandler(handler)
  assert reports == ["Task exception was never retrieved"]  # Ours only: orbax's dropped.
