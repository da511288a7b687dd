"""Never lose a run: damaged checkpoints and run files, refused resumes, the workdir lock, one-line errors.

One reference run (a tiny Perceiver on digits, 12 steps, a checkpoint every 4) trains in this process;
each test damages a copy of its workdir and checks the outcome: the final `params_checksum`, which files
were left untouched, the message. Two subprocesses check the exit status and the one-line error of
experiments/train.py.
"""

import functools
import gc
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, TINY, child_env, load_config, steps
from etils import epath

from perceiver_jax import config_args
from perceiver_jax.tools import sweep, tables, visualize
from perceiver_jax.training import checkpoint, parallel, run_files, train

# Integration tests: subprocesses, TPU compiles or a trained reference run.
pytestmark = pytest.mark.slow


def tiny(**overrides):
  config = load_config("digits", TINY)
  for key, value in overrides.items():
    config_args.set_path(config, key, value)
  return config


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("reliability")
  # The resumes compile the same steps again: a persistent cache turns that into a lookup.
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  saved = {k: getattr(jax.config, k) for k in keys}
  jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    results = train.train_and_evaluate(tiny(), str(root / "ref"), tensorboard=False)
    yield root / "ref", results
  finally:
    for key, value in saved.items():
      jax.config.update(key, value)


def copy_run(reference, tmp_path, finished=False):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  if not finished:
    (workdir / "results.json").unlink()
  return workdir


def snapshot(workdir):
  """{relative path: bytes} of every file under `workdir`."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_missing_item_directory_and_torn_metrics_line_resume_bit_identical(reference, tmp_path, caplog):
  workdir = copy_run(reference, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "12" / "default")
  metrics = workdir / "metrics.jsonl"
  whole = metrics.read_text()
  metrics.write_text(whole + '{"step": 16, "train_lo')  # A write cut short.
  older = {s: snapshot(workdir / "checkpoints" / str(s)) for s in (4, 8)}
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  assert results["params_checksum"] == reference[1]["params_checksum"]
  assert results["history"] == reference[1]["history"]
  # Only step 12 was set aside; 4 and 8 are as they were, and 12 was written again.
  assert sorted(os.listdir(workdir / "corrupt_checkpoints")) == ["12"]
  assert steps(workdir) == [4, 8, 12]
  assert all(snapshot(workdir / "checkpoints" / str(s)) == older[s] for s in (4, 8))
  logged = [json.loads(line) for line in metrics.read_text().splitlines()]
  expected = [json.loads(line) for line in whole.splitlines()]
  assert [r["step"] for r in logged] == [r["step"] for r in expected] == [4, 8, 12, 12]
  for got, want in zip(logged, expected, strict=True):
    assert {k: v for k, v in got.items() if k != "examples_per_s"} == {
      k: v for k, v in want.items() if k != "examples_per_s"
    }
  unreadable = [r for r in caplog.records if "is unreadable" in r.getMessage()]
  assert len(unreadable) == 1 and "12/default is missing" in unreadable[0].getMessage()
  assert any("torn last line 5 of" in r.getMessage() for r in caplog.records)
  assert not any("Event loop is closed" in r.getMessage() for r in caplog.records)
  run = train.load_run(str(workdir))
  assert run.step == 12 and checkpoint.params_checksum(run.state.params) == results["params_checksum"]


@pytest.mark.parametrize("damage", ["emptied", "truncated"])
def test_damaged_newest_checkpoint_leaves_the_manager_able_to_restore_and_save(reference, tmp_path, damage):
  workdir = copy_run(reference, tmp_path)
  newest = workdir / "checkpoints" / "12"
  if damage == "emptied":
    shutil.rmtree(newest)
    newest.mkdir()
  else:
    for path in newest.rglob("*"):
      if path.is_file() and path.parent.name == "d":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  config = tiny()
  trainer = train.Trainer(config, total_steps=12)
  target = checkpoint.abstract_state(
    functools.partial(train.init_state, config, trainer.model, trainer.optimizer),
    parallel.replicated(trainer.mesh),
  )
  manager = checkpoint.make_manager(str(workdir), keep=3)
  try:
    state, step = checkpoint.restore_latest(manager, target, move_aside_corrupt=True)
    assert step == 8
    ref8 = train.load_run(str(reference[0]), step=8)
    assert checkpoint.params_checksum(state.params) == checkpoint.params_checksum(ref8.state.params)
    checkpoint.save(manager, 12, state)  # Failed with "Must provide `args` of type `Composite`".
    manager.wait_until_finished()
  finally:
    manager.close()
  assert steps(workdir) == [4, 8, 12] and os.listdir(workdir / "corrupt_checkpoints") == ["12"]


def test_resume_with_another_model_is_refused_and_touches_nothing(reference, tmp_path, monkeypatch):
  workdir = copy_run(reference, tmp_path, finished=True)
  before = snapshot(workdir)
  with pytest.raises(
    train.ConfigChangeRefused, match=r"model\.latent_channels 16 -> 32.*--accept_config_change"
  ):
    train.train_and_evaluate(tiny(**{"model.latent_channels": 32}), str(workdir), tensorboard=False)
  assert snapshot(workdir) == before
  # Accepted, the checkpoints of the other shape are still not taken for corruption; told from their
  # metadata, before any array is read (a failed read left coroutines that printed tracebacks when collected).
  left_behind = []
  monkeypatch.setattr(sys, "unraisablehook", left_behind.append)
  with pytest.raises(checkpoint.CheckpointMismatch, match="latent"):
    train.train_and_evaluate(
      tiny(**{"model.latent_channels": 32}), str(workdir), tensorboard=False, accept_config_change=True
    )
  gc.collect()
  assert not left_behind, [repr(u.exc_value)[:200] for u in left_behind]
  assert snapshot(workdir) == before


def test_experiment_changes_are_refused_allowed_ones_recorded(reference):
  workdir = str(reference[0])
  with pytest.raises(train.ConfigChangeRefused, match=r"input\.permutation 'none' -> 'fixed'"):
    train.check_resume(tiny(**{"input.permutation": "fixed"}), workdir)
  for key, value in (("seed", 1), ("optimizer.learning_rate", 0.1), ("dataset.test_fraction", 0.3)):
    with pytest.raises(train.ConfigChangeRefused, match=key.replace(".", r"\.")):
      train.check_resume(tiny(**{key: value}), workdir)
  accepted = train.check_resume(tiny(**{"input.permutation": "fixed"}), workdir, accept_config_change=True)
  assert accepted["input"]["permutation"] == "fixed"
  assert accepted[run_files.CONFIG_CHANGES] == [
    {"changes": {"input.permutation": ["none", "fixed"]}, "accepted": ["input.permutation"]}
  ]
  longer = train.check_resume(tiny(**{"train.num_steps": 40, "checkpoint.every": 10}), workdir)
  assert longer[run_files.CONFIG_CHANGES][0]["accepted"] == []
  assert set(longer[run_files.CONFIG_CHANGES][0]["changes"]) == {"train.num_steps", "checkpoint.every"}
  assert run_files.config_diff(json.loads((reference[0] / "config.json").read_text()), tiny()) == {}


def test_a_busy_workdir_is_refused_and_a_dead_holder_taken_over(reference, tmp_path, caplog):
  workdir = copy_run(reference, tmp_path)
  before = snapshot(workdir)
  lock = workdir / "lock"
  lock.write_text(json.dumps({"host": run_files.WorkdirLock(workdir).owner["host"], "pid": os.getppid()}))
  with pytest.raises(run_files.WorkdirBusy, match=f"pid {os.getppid()} on host "):
    train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  assert snapshot(workdir) == {**before, "lock": lock.read_bytes()}
  gone = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
  )
  dead = int(gone.stdout)
  lock.write_text(json.dumps({"host": run_files.WorkdirLock(workdir).owner["host"], "pid": dead}))
  with caplog.at_level(logging.WARNING), run_files.WorkdirLock(workdir) as held:
    assert json.loads(lock.read_text()) == held.owner
    assert held.owner["pid"] == os.getpid() and held.owner["host"] == socket.gethostname()
  assert any(f"pid {dead}" in r.getMessage() and "gone" in r.getMessage() for r in caplog.records)
  assert not lock.exists()
  lock.write_text(json.dumps({"host": "another-host", "pid": dead}))
  with pytest.raises(run_files.WorkdirBusy, match="on host another-host"):
    run_files.WorkdirLock(workdir).acquire()


def test_unreadable_run_files_are_named(reference, tmp_path, caplog):
  workdir = copy_run(reference, tmp_path, finished=True)
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  (workdir / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
  with pytest.raises(run_files.RunFileError, match=r"Line 2 of \S+metrics.jsonl"):
    train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  (workdir / "config.json").write_text("{not json")
  with pytest.raises(run_files.RunFileError, match=r"\S+config.json is not valid JSON"):
    train.evaluate_run(str(workdir))
  with pytest.raises(run_files.RunFileError, match=r"\S+config.json is not valid JSON"):
    train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  # A torn last line is dropped, with a warning naming the file.
  (workdir / "m.jsonl").write_text(lines[0] + "\n" + lines[1][:10])
  with caplog.at_level(logging.WARNING):
    assert run_files.read_jsonl(workdir / "m.jsonl") == [json.loads(lines[0])]
  assert any("m.jsonl" in r.getMessage() for r in caplog.records)


def test_bad_values_name_the_field(reference, tmp_path):
  for key, value, match in (
    ("train.num_steps", 0, "train.num_steps=0 must be a positive integer"),
    ("train.log_every", -1, "train.log_every=-1 must be a positive integer"),
    ("train.global_batch_size", 12, "train.global_batch_size=12 must be a multiple of the 8 devices"),
  ):
    with pytest.raises(ValueError, match=match):
      train.train_and_evaluate(tiny(**{key: value}), str(tmp_path / "new"), tensorboard=False)
  with pytest.raises(ValueError, match="checkpoint.every=0 must be a positive integer"):
    train.train_and_evaluate(tiny(**{"checkpoint.every": 0}), str(tmp_path / "new"), tensorboard=False)
  assert not (tmp_path / "new").exists()
  (tmp_path / "file").write_text("x")
  with pytest.raises(NotADirectoryError, match="is a file"):
    train.train_and_evaluate(tiny(), str(tmp_path / "file"), tensorboard=False)
  with pytest.raises(
    ValueError, match="'model.latent_chanels' names no config field; nearest: model.latent_ch"
  ):
    config_args.set_path(tiny(), "model.latent_chanels", 3)


def test_tools_check_their_input(reference, tmp_path, caplog, monkeypatch):
  with pytest.raises(FileNotFoundError, match="--runs=/nonexistent is not a directory"):
    tables.find_runs(["/nonexistent"])
  good = tmp_path / "runs" / "good"
  bad = tmp_path / "runs" / "bad"
  shutil.copytree(reference[0], good)
  shutil.copytree(reference[0], bad)
  (bad / "results.json").write_text('{"eval": {}}')
  with caplog.at_level(logging.WARNING):
    found = tables.find_runs([str(tmp_path / "runs")])
  assert [os.path.basename(r.path) for r in found] == ["good"]
  assert any(str(bad) in r.getMessage() and "Skipping" in r.getMessage() for r in caplog.records)

  monkeypatch.chdir(ROOT)
  root = tmp_path / "sweep"
  with pytest.raises(ValueError, match="Run num_cross_attends=3: num_cross_attends=3 must divide"):
    sweep.main("configs/digits.py:runlocal", ["num_cross_attends=1,3"], str(root), "local", "no_such.py")
  with pytest.raises(ValueError, match="--config.model.foo names no config field"):  # As train.py says it.
    sweep.main("configs/digits.py:runlocal", ["seed=0"], str(root), "local", "x.py", ["--config.model.foo=1"])
  assert not root.exists()  # Nothing was launched.

  with pytest.raises(ValueError, match=f"--examples=1001 must be in 1..{visualize.MAX_EXAMPLES}"):
    visualize.visualize_run(None, str(tmp_path / "vis"), num_examples=1001)


def cli(*args, cwd=ROOT):
  return subprocess.run(
    [sys.executable, "experiments/train.py", "--notensorboard", *args],
    cwd=cwd,
    env=child_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_train_script_errors_are_one_line(reference, tmp_path):
  workdir = copy_run(reference, tmp_path, finished=True)
  before = snapshot(workdir)
  done = cli(
    f"--config=configs/digits.py:{TINY}", "--config.model.latent_channels=32", f"--workdir={workdir}"
  )
  assert done.returncode == 1 and "Traceback" not in done.stderr
  [line] = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
  assert "model.latent_channels 16 -> 32" in line and "--accept_config_change" in line
  assert snapshot(workdir) == before
  typo = cli("--config=configs/digits.py:runlocal", "--config.model.latent_chanels=3", f"--workdir={workdir}")
  assert typo.returncode == 2 and "Traceback" not in typo.stderr
  assert "error: --config.model.latent_chanels names no config field; nearest: model.latent_channels" in (
    typo.stderr
  )
  verbose = cli("--config=configs/digits.py:runlocal", "--config.model.latent_chanels=3", "--verbose")
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_missing_config_file_and_data_dir_are_one_line(tmp_path):
  workdir = tmp_path / "w"
  missing = cli("--config=configs/no_such_config.py", f"--workdir={workdir}")
  assert missing.returncode != 0 and "Traceback" not in missing.stderr
  [line] = [x for x in missing.stderr.splitlines() if x.startswith("error: ")]
  assert "configs/no_such_config.py" in line and "No such file" in line
  nowhere = tmp_path / "nowhere"
  no_data = cli(
    "--config=configs/imagenet.py:runlocal", f"--config.dataset.data_dir={nowhere}", f"--workdir={workdir}"
  )
  assert no_data.returncode == 1 and "Traceback" not in no_data.stderr
  [line] = [x for x in no_data.stderr.splitlines() if x.startswith("error: ")]
  assert f"dataset.data_dir='{nowhere}' does not exist" in line and "prepare_imagenet.py" in line
  assert not workdir.exists()  # Refused before the workdir was made.


# Issue 33: a checkpoint that lies, a lost final eval, a resume without config.json, logs after a stop,
# a lock a container cannot take back.


def without_speed(records):
  return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in records]


def test_arrays_that_read_back_wrong_fail_the_checksum_and_the_previous_checkpoint_is_used(
  reference, tmp_path, caplog
):
  workdir = copy_run(reference, tmp_path)
  # Arrays that read back as other numbers than were saved, without an error: what a few bytes changed in
  # a larger model's array file do (orbax checks no bytes there; scripts/break_runs.py flips them in a
  # digits run). Here orbax itself rewrites the item with one parameter nudged by one ulp.
  item = workdir / "checkpoints" / "12" / "default"
  state = ocp.StandardCheckpointer().restore(item)
  state["params"]["perceiver/classifier"]["b"] = np.nextafter(state["params"]["perceiver/classifier"]["b"], 9)
  saver = ocp.StandardCheckpointer()
  saver.save(item, state, force=True)
  saver.wait_until_finished()
  with pytest.raises(FileNotFoundError, match="No readable checkpoint"):
    train.load_run(str(workdir), step=12)  # Evaluate refuses it.
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert damaged and "Checkpoint of step 12" in damaged[0] and "sha256" in damaged[0]
  assert os.listdir(workdir / "corrupt_checkpoints") == ["12"]
  assert results["params_checksum"] == reference[1]["params_checksum"]


def test_final_eval_lost_to_a_kill_is_run_and_logged_on_resume(reference, tmp_path):
  workdir = copy_run(reference, tmp_path)
  metrics = workdir / "metrics.jsonl"
  lines = metrics.read_text().splitlines()
  assert "eval_top1" in lines[-1]
  metrics.write_text("\n".join(lines[:-1]) + "\n")  # Killed during the final eval.
  results = train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  assert results["history"] == reference[1]["history"] and results["eval"] == reference[1]["eval"]
  assert without_speed(run_files.read_jsonl(metrics)) == without_speed(
    run_files.read_jsonl(reference[0] / "metrics.jsonl")
  )
  assert json.loads((workdir / "results.json").read_text())["history"] == reference[1]["history"]


def test_checkpoints_carry_their_config_so_a_resume_is_checked_without_config_json(reference, tmp_path):
  workdir = copy_run(reference, tmp_path)
  (workdir / "config.json").unlink()
  with pytest.raises(train.ConfigChangeRefused, match=r"optimizer\.learning_rate 0\.003 -> 0\.001"):
    train.train_and_evaluate(tiny(**{"optimizer.learning_rate": 0.001}), str(workdir), tensorboard=False)
  assert not (workdir / "config.json").exists()
  assert checkpoint.load_config(str(workdir)).to_dict() == tiny().to_dict()  # evaluate.py needs no more.


def test_a_finished_run_resumed_with_fewer_steps_is_refused_and_left_as_it_was(reference, tmp_path):
  workdir = copy_run(reference, tmp_path, finished=True)
  before = snapshot(workdir)
  with pytest.raises(ValueError, match=r"has trained 12 steps, more than this config's 8 .*evaluate\.py"):
    train.train_and_evaluate(tiny(**{"train.num_steps": 8}), str(workdir), tensorboard=False)
  assert snapshot(workdir) == before


def test_a_run_stopped_between_log_steps_logs_like_an_uninterrupted_one(reference, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  with monkeypatch.context() as patch:  # A SIGTERM seen after step 5: log steps are 4, 8 and 12.
    patch.setattr(checkpoint.PreemptionWatcher, "stop_requested", lambda self, step=None: step == 5)
    stopped = train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  assert stopped["preempted"] and stopped["step"] == 5
  results = train.train_and_evaluate(tiny(), str(workdir), tensorboard=False)
  assert results["params_checksum"] == reference[1]["params_checksum"]
  assert results["history"] == reference[1]["history"]
  assert without_speed(run_files.read_jsonl(workdir / "metrics.jsonl")) == without_speed(
    run_files.read_jsonl(reference[0] / "metrics.jsonl")
  )


# run_files loaded by path: the lock needs neither JAX nor the rest of the library.
RUN_FILES = ROOT / "perceiver_jax" / "training" / "run_files.py"
LOCK = f"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("run_files", {str(RUN_FILES)!r})
run_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_files)
lock = run_files.WorkdirLock(sys.argv[1])
lock.acquire()
print("took the lock as pid", os.getpid(), flush=True)
if sys.argv[2] == "hold":
  time.sleep(60)
lock.release()
"""


def test_a_container_restarted_as_pid_1_takes_its_lock_back(tmp_path):
  """A run as PID 1 of a fresh PID namespace, SIGKILLed, then started again the same way (as root)."""
  # --kill-child: unshare's SIGKILL reaches the run (PID 1 ignores signals sent from inside its namespace).
  in_container = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c", LOCK]
  holder = subprocess.Popen([*in_container, str(tmp_path), "hold"], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "took the lock as pid 1"
  finally:
    holder.kill()
    holder.wait(timeout=60)
  assert json.loads((tmp_path / "lock").read_text())["pid"] == 1  # Left behind by the kill.
  again = subprocess.run(
    [*in_container, str(tmp_path), "release"], capture_output=True, text=True, timeout=60
  )
  assert again.returncode == 0 and "took the lock as pid 1" in again.stdout, again.stderr[-2000:]
  assert "Taking over the lock" in again.stderr and not (tmp_path / "lock").exists()
  # The live holder is still told apart from its own pid: same pid and start time, another lock object.
  with run_files.WorkdirLock(tmp_path):
    with pytest.raises(run_files.WorkdirBusy, match=f"pid {os.getpid()} on host"):
      run_files.WorkdirLock(tmp_path).acquire()


def test_a_bad_value_or_an_unknown_dataset_for_a_new_workdir_leaves_nothing_behind(tmp_path):
  new = tmp_path / "new"
  with pytest.raises(ValueError, match="num_self_heads=3 does not divide latent_channels=16"):
    train.train_and_evaluate(tiny(**{"model.num_self_heads": 3}), str(new), tensorboard=False)
  assert not new.exists()
  with pytest.raises(ValueError, match=r"dataset\.name='cifar10' is not one of this package's sources"):
    train.train_and_evaluate(tiny(**{"dataset.name": "cifar10"}), str(new), tensorboard=False)
  assert not new.exists()
  # `synthetic` is a source (issue 27) that needs its sizes, which the digits config does not give.
  with pytest.raises(ValueError, match=r"The synthetic dataset needs dataset\.num_train_examples"):
    train.train_and_evaluate(tiny(**{"dataset.name": "synthetic"}), str(new), tensorboard=False)
  assert not new.exists()


def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
  def full(self, text, *args, **kwargs):
    pathlib.Path(self).write_text(text[:5])  # Part written, then the disk is full.
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(type(epath.Path(tmp_path)), "write_text", full)
  with pytest.raises(
    run_files.RunFileError, match=r"Cannot write \S+metrics.jsonl \(OSError: .*No space left"
  ):
    run_files.write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1}])
  assert os.listdir(tmp_path) == []


def test_load_run_retries_when_a_training_run_replaced_its_checkpoints_meanwhile(
  reference, tmp_path, monkeypatch
):
  """evaluate.py beside a run with checkpoint.keep=1: the steps it listed are deleted, a newer one saved."""
  workdir = copy_run(reference, tmp_path)
  later = tmp_path / "12"
  (workdir / "checkpoints" / "12").rename(later)
  restore, calls = checkpoint.restore_latest, []

  def raced(manager, *args, **kwargs):
    if not calls:  # The run saves 12 and deletes 4 and 8 after evaluate listed [4, 8].
      later.rename(workdir / "checkpoints" / "12")
      for step in (4, 8):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    calls.append(1)
    return restore(manager, *args, **kwargs)

  monkeypatch.setattr(checkpoint, "restore_latest", raced)
  run = train.load_run(str(workdir))
  assert run.step == 12 and len(calls) == 2
  assert checkpoint.params_checksum(run.state.params) == reference[1]["params_checksum"]


def test_a_config_file_that_raises_is_named_with_its_line(tmp_path, capsys):
  from absl import flags
  from ml_collections import config_flags

  from perceiver_jax import cli as entry

  path = tmp_path / "broken.py"
  path.write_text("def get_config(arg=None):\n  steps = 0\n  return 1 / steps\n")
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values)
  with pytest.raises(SystemExit) as exit_status:
    entry.parse_flags(["train.py", f"--config={path}"], values)
  assert exit_status.value.code == 2
  assert capsys.readouterr().err == (
    f"error: division by zero (in {path}, line 3) (--verbose shows the traceback)\n"
  )


def test_a_full_disk_under_orbax_is_told_apart_and_its_tracebacks_kept_off_the_log():
  try:
    try:
      raise OSError(28, "No space left on device")
    except OSError as e:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x"') from e
  except ValueError as error:
    assert checkpoint.disk_full(error) and checkpoint.disk_full(error.__cause__)
  # tensorstore's message alone (no errno in the chain), as orbax's background save raises it.
  assert checkpoint.disk_full(ValueError('RESOURCE_EXHAUSTED: Error writing local file "x"'))
  assert not checkpoint.disk_full(ValueError("DATA_LOSS: checksum"))
  assert not checkpoint.disk_full(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
  quiet = [f for f in logging.getLogger("absl").filters if isinstance(f, checkpoint._OrbaxTracebacks)]
  assert len(quiet) == 1
  for path, kept in (("/x/orbax/checkpoint/future.py", False), ("/x/perceiver_jax/train.py", True)):
    record = logging.LogRecord(
      "absl", logging.ERROR, path, 1, "failed", None, (ValueError, ValueError(), None)
    )
    assert quiet[0].filter(record) and (record.exc_info is not None) == kept


def _catches_sigterm(pid: int) -> bool:
  """Whether process `pid` has a handler of its own for SIGTERM (its SigCgt mask in /proc)."""
  status = pathlib.Path(f"/proc/{pid}/status").read_text()
  caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
  return bool(caught >> (signal.SIGTERM - 1) & 1)


def test_sigterm_while_the_entry_point_imports_ends_in_one_line(tmp_path):
  """It used to end the process silently (status -15), or, once libtpu had loaded, with its stack trace."""
  proc = subprocess.Popen(
    [sys.executable, "experiments/train.py", f"--workdir={tmp_path / 'w'}"],
    cwd=ROOT,
    env=child_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.time() + 60
    while not _catches_sigterm(proc.pid):  # The entry point's first lines, before JAX is imported.
      assert proc.poll() is None and time.time() < deadline
      time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 143, err[-2000:]
  assert err.splitlines() == [
    "error: stopped by SIGTERM outside the train loop (starting up or ending); the checkpoints saved so far "
    "are whole: run the same command again to go on."
  ]


def test_a_killed_holder_not_yet_reaped_holds_no_lock(tmp_path):
  """A SIGKILLed run is a zombie until its launcher collects it: its pid and start time still read."""
  child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    holder = {**run_files.WorkdirLock(tmp_path).owner, "pid": child.pid}
    holder["start_time"] = run_files._start_time(child.pid)  # noqa: SLF001
    (tmp_path / "lock").write_text(json.dumps(holder))
    with pytest.raises(run_files.WorkdirBusy, match=f"pid {child.pid} "):
      run_files.WorkdirLock(tmp_path).acquire()
    child.kill()
    while pathlib.Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
      time.sleep(0.01)  # Not waited for: a zombie.
    with run_files.WorkdirLock(tmp_path) as held:
      assert json.loads((tmp_path / "lock").read_text()) == held.owner
  finally:
    child.kill()
    child.wait()
