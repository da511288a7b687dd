r"""Breaks tiny digits runs the ways users do and checks each outcome (docs/scale_out.md, "Breaking runs").

  python scripts/break_runs.py                 # every case, in a temporary directory
  python scripts/break_runs.py --cases=sigterm_twice,lock_pid1 --keep=/tmp/broken

Each case trains (or damages) a tiny Perceiver on digits (12 steps, a checkpoint every 4, logs every 4)
through experiments/train.py and evaluate.py, as a user would, and prints one line: the case, PASS or
FAIL, and what was seen. Exit status 1 if any case fails. Signals land by the log lines they follow; a
wrapper slows the steps (TEST_SLOW_FROM, as tests/conftest.py does) so that they land mid-run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = (
  "runlocal,num_latents=8,latent_channels=16,num_cross_attends=1,num_latent_transformers=1,"
  "num_self_attends_per_block=1,num_self_heads=2,num_steps=12,checkpoint.every=4,keep=3,log_every=4,"
  "eval_every=12"
)
CONFIG = f"--config=configs/digits.py:{TINY}"
# experiments/*.py with every train batch from index TEST_SLOW_FROM on delayed by TEST_DELAY seconds.
SLOW = """
import os, runpy, sys, time
from perceiver_jax import data
slow_from, delay = int(os.environ.get("TEST_SLOW_FROM", -1)), float(os.environ.get("TEST_DELAY", 0.3))
original = data.train_batches
def train_batches(config, start_step=0):
  for index, batch in enumerate(original(config, start_step=start_step), start_step):
    if 0 <= slow_from <= index:
      time.sleep(delay)
    yield batch
data.train_batches = train_batches
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def command(workdir, *flags, script="experiments/train.py") -> list[str]:
  return [sys.executable, "-c", SLOW, script, f"--workdir={workdir}", "--notensorboard", *flags]


def env(**extra) -> dict[str, str]:
  values = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  values["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
  values.update({k: str(v) for k, v in extra.items()})
  return values


def run(cmd, **extra) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=ROOT, env=env(**extra), capture_output=True, text=True, timeout=600)


def error_lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.startswith("error: ")]


class Signalled:
  """A training subprocess whose stderr is watched for a line, to signal it right after."""

  def __init__(self, root: pathlib.Path, workdir, *flags, **extra):
    self.log = root / f"log_{time.time_ns()}"
    with self.log.open("w") as err:
      self.proc = subprocess.Popen(
        command(workdir, CONFIG, *flags),
        cwd=ROOT,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
      )

  def wait_for(self, text: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while text not in self.log.read_text():
      if self.proc.poll() is not None or time.time() > deadline:
        raise RuntimeError(f"never saw {text!r}: {self.log.read_text()[-1500:]}")
      time.sleep(0.02)

  def finish(self, timeout: float = 300) -> tuple[int, str, str]:
    stdout = self.proc.communicate(timeout=timeout)[0]
    return self.proc.returncode, stdout, self.log.read_text()


def records(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(x).items() if k != "examples_per_s"} for x in lines]


def run_again(workdir) -> tuple[subprocess.CompletedProcess, dict]:
  """The digits run in `workdir` started again: its process and its results.json ({} when it failed)."""
  done = run(command(workdir, CONFIG))
  return done, json.loads((workdir / "results.json").read_text()) if done.returncode == 0 else {}


def fresh(root: pathlib.Path, ref: pathlib.Path, name: str, finished: bool = False) -> pathlib.Path:
  workdir = root / name
  shutil.copytree(ref, workdir)
  if not finished:
    (workdir / "results.json").unlink()
  return workdir


# Each case: (root, reference workdir, reference results) -> (ok, what was seen).


def case_flipped_bytes(root, ref, results):
  """Bytes changed in the largest array file of a digits `runlocal` checkpoint; evaluate.py on it."""
  workdir = root / "flipped"
  done = run(command(workdir, "--config=configs/digits.py:runlocal,num_steps=2,checkpoint.every=2"))
  if done.returncode:
    return False, f"the run failed: {done.stderr[-300:]}"
  files = sorted((workdir / "checkpoints" / "2" / "default" / "ocdbt.process_0" / "d").iterdir())
  largest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  for offset in range(len(data) // 2, len(data) // 2 + 16):
    data[offset] ^= 0xFF
  largest.write_bytes(bytes(data))
  evaluated = run([sys.executable, "experiments/evaluate.py", f"--workdir={workdir}"])
  damaged = re.search(r"Checkpoint of step 2 .* is (damaged|unreadable) \(([^)]{0,60})", evaluated.stderr)
  ok = evaluated.returncode == 1 and damaged is not None and len(error_lines(evaluated.stderr)) == 1
  return ok, f"evaluate.py exit {evaluated.returncode}; {damaged.group(0) if damaged else 'no warning'}"


def case_lying_checkpoint(root, ref, results):
  """Step 12's arrays rewritten by orbax with one parameter one ulp off; the run resumed."""
  os.environ.update(env())  # The runs' 2 CPU devices, before JAX starts here: orbax restores that layout.
  import numpy as np
  import orbax.checkpoint as ocp

  workdir = fresh(root, ref, "lying")
  item = workdir / "checkpoints" / "12" / "default"
  state = ocp.StandardCheckpointer().restore(item)
  bias = state["params"]["perceiver/classifier"]["b"]
  state["params"]["perceiver/classifier"]["b"] = np.nextafter(bias, 9)
  saver = ocp.StandardCheckpointer()
  saver.save(item, state, force=True)
  saver.wait_until_finished()
  done, again = run_again(workdir)
  ok = "is damaged" in done.stderr and again.get("params_checksum") == results["params_checksum"]
  return ok, f"exit {done.returncode}; damaged noticed: {'is damaged' in done.stderr}; same parameters: {ok}"


def case_sigterm_twice(root, ref, results):
  """SIGTERM after `step 4/12`, then again every 20 ms until the process ends."""
  workdir = root / "twice"
  proc = Signalled(root, workdir, TEST_SLOW_FROM=3)
  proc.wait_for("step 4/12")
  proc.proc.send_signal(signal.SIGTERM)
  while proc.proc.poll() is None:
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)
  rc, stdout, stderr = proc.finish()
  names = [p.name for p in (workdir / "checkpoints").iterdir()]
  leftovers = [n for n in names if not n.isdigit() and n != "checksums_since.json"]  # Not the marker.
  ok = rc == 0 and "Preempted" in stdout and not leftovers and not (workdir / "lock").exists()
  return ok, f"exit {rc}; unfinished checkpoints {leftovers}; lock left: {(workdir / 'lock').exists()}"


def case_ctrl_c(root, ref, results):
  """SIGINT (Ctrl-C) after `step 4/12`, then the run again."""
  workdir = root / "ctrl_c"
  proc = Signalled(root, workdir, TEST_SLOW_FROM=3)
  proc.wait_for("step 4/12")
  proc.proc.send_signal(signal.SIGINT)
  rc, stdout, stderr = proc.finish()
  _, again = run_again(workdir)
  ok = rc == 0 and "Traceback" not in stderr and again.get("params_checksum") == results["params_checksum"]
  return ok, f"exit {rc}, {stdout.strip()!r}; resumed to the same parameters: {ok}"


def case_kill_during_final_eval(root, ref, results):
  """kill -9 right after `step 12/12` (the final eval runs then), then the run again."""
  workdir = root / "final_eval"
  proc = Signalled(root, workdir)
  proc.wait_for("step 12/12")
  proc.proc.kill()
  proc.finish()
  if (workdir / "results.json").exists():
    return False, "the kill came after the end; run the case again"
  _, again = run_again(workdir)
  ok = again.get("history") == results["history"] and records(workdir) == records(ref)
  return ok, f"history after the resume {[h['step'] for h in again.get('history', [])]}; logs equal: {ok}"


def case_no_config_json(root, ref, results):
  """config.json deleted, the run resumed with another learning rate."""
  workdir = fresh(root, ref, "no_config")
  (workdir / "config.json").unlink()
  done = run(command(workdir, CONFIG, "--config.optimizer.learning_rate=0.001"))
  lines = error_lines(done.stderr)
  ok = done.returncode == 1 and len(lines) == 1 and "optimizer.learning_rate 0.003 -> 0.001" in lines[0]
  return ok, f"exit {done.returncode}: {lines[0][:120] if lines else 'no error line'}"


LOCK = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_files", sys.argv[1])
run_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_files)
lock = run_files.WorkdirLock(sys.argv[2])
lock.acquire()
print("took the lock", flush=True)
if sys.argv[3] == "hold":
  time.sleep(60)
lock.release()
"""


def case_lock_pid1(root, ref, results):
  """A run as PID 1 of a fresh PID namespace (a container) takes the lock, is SIGKILLed, starts again."""
  workdir = root / "pid1"
  workdir.mkdir()
  unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c", LOCK]
  args = [str(ROOT / "perceiver_jax" / "training" / "run_files.py"), str(workdir)]
  holder = subprocess.Popen([*unshare, *args, "hold"], stdout=subprocess.PIPE, text=True)
  if holder.stdout.readline().strip() != "took the lock":
    holder.kill()
    return False, "unshare did not run (needs root)"
  holder.kill()
  holder.wait()
  again = subprocess.run([*unshare, *args, "release"], capture_output=True, text=True, timeout=60)
  ok = again.returncode == 0 and "took the lock" in again.stdout
  seen = " ".join((again.stdout + again.stderr).split())[-160:]
  return ok, f"restarted container: exit {again.returncode}: {seen}"


def case_two_workdirs(root, ref, results):
  """Two processes of one run (gloo, 127.0.0.1) given different --workdir values."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [
    subprocess.Popen(
      command(
        root / f"w{i}",
        CONFIG,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        "--local_device_count=1",
      ),
      cwd=ROOT,
      env=env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  start = time.time()
  try:
    outs = [p.communicate(timeout=180)[0] for p in procs]
  except subprocess.TimeoutExpired:
    return False, "still running after 180 s"
  finally:
    for p in procs:
      p.kill()
  lines = [error_lines(out) for out in outs]
  ok = all(p.returncode == 1 for p in procs) and all(x and "--workdir" in x[0] for x in lines)
  return ok, f"exits {[p.returncode for p in procs]} after {time.time() - start:.0f} s: {lines[0][:1]}"


def case_sigterm_between_logs(root, ref, results):
  """SIGTERM after `step 4/12` (log steps 4, 8, 12), then the run again: its logs against the reference."""
  workdir = root / "between_logs"
  proc = Signalled(root, workdir, TEST_SLOW_FROM=3)
  proc.wait_for("step 4/12")
  proc.proc.send_signal(signal.SIGTERM)
  rc, stdout, _ = proc.finish()
  _, again = run_again(workdir)
  same = records(workdir) == records(ref)
  ok = rc == 0 and same and again.get("params_checksum") == results["params_checksum"]
  return ok, f"{stdout.strip()!r}; metrics.jsonl equal to the uninterrupted run's: {same}"


def case_fewer_steps(root, ref, results):
  """A finished 12-step run resumed with train.num_steps=8."""
  workdir = fresh(root, ref, "fewer", finished=True)
  before = (workdir / "config.json").read_text()
  done = run(command(workdir, CONFIG, "--config.train.num_steps=8"))
  lines = error_lines(done.stderr)
  ok = done.returncode == 1 and len(lines) == 1 and (workdir / "config.json").read_text() == before
  return ok, f"exit {done.returncode}: {lines[0][:120] if lines else 'no error line'}"


def case_config_raises(root, ref, results):
  """A config file whose get_config raises."""
  path = root / "broken_config.py"
  path.write_text("def get_config(arg=None):\n  steps = 0\n  return 1 / steps\n")
  done = run(command(root / "broken", f"--config={path}"))
  lines = error_lines(done.stderr)
  ok = done.returncode == 2 and len(lines) == 1 and "line 3" in lines[0] and "Traceback" not in done.stderr
  return ok, f"exit {done.returncode}: {lines[0] if lines else 'no error line'}"


def case_unknown_dataset(root, ref, results):
  """--config.dataset.name=cifar10 on configs/digits.py (a TFDS name on a config without TFDS fields)."""
  workdir = root / "cifar10"
  done = run(command(workdir, CONFIG, "--config.dataset.name=cifar10"))
  lines = error_lines(done.stderr)
  ok = done.returncode == 1 and len(lines) == 1 and "dataset.name='cifar10'" in lines[0]
  return ok and not workdir.exists(), f"exit {done.returncode}; workdir made: {workdir.exists()}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pair(root: pathlib.Path, workdir, name: str = "pair", **extra) -> list[subprocess.Popen]:
  """The two processes of one run on 127.0.0.1 (gloo, 1 CPU device each), their stderr in root/<name><i>."""
  port, procs = _free_port(), []
  for i in range(2):
    flags = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
    with (root / f"{name}{i}").open("w") as err:
      procs.append(
        subprocess.Popen(
          command(workdir, CONFIG, *flags, "--local_device_count=1"),
          cwd=ROOT,
          env=env(**extra),
          stdout=subprocess.PIPE,
          stderr=err,
          text=True,
        )
      )
  return procs


def _settled(path: pathlib.Path, quiet_s: float = 0.5, limit_s: float = 10) -> str:
  """`path`'s text once nothing was added for `quiet_s`: an aborted process's filter may still write."""
  deadline, size, since = time.time() + limit_s, -1, time.time()
  while time.time() < deadline:
    now = path.stat().st_size
    if now != size:
      size, since = now, time.time()
    elif time.time() - since >= quiet_s:
      break
    time.sleep(0.05)
  return path.read_text()


# What a process's stderr must not hold once it has said what happened in one line.
NOISE = ("Traceback", "Check failure", "Fatal Python error")


def _pair_saved(root: pathlib.Path, name: str, watched: int) -> tuple[list[subprocess.Popen], str | None]:
  """The two processes of a slowed run in a fresh root/name, once step 4 is saved: (processes, None), or
  (processes, why not) when process `watched` ended first or it took over 300 s."""
  workdir = root / name
  shutil.rmtree(workdir, ignore_errors=True)  # A workdir kept (--keep) from an earlier try.
  procs = _pair(root, workdir, name, TEST_SLOW_FROM=3)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "4").exists():
    if procs[watched].poll() is not None or time.time() > deadline:
      return procs, f"step 4 never saved: {(root / f'{name}{watched}').read_text()[-300:]}"
    time.sleep(0.02)
  return procs, None


def _both_again(root: pathlib.Path, name: str, log: int) -> tuple[list[int], bool]:
  """Both processes of root/name started again: their exit statuses, and whether process `log` resumed."""
  rcs = [p.wait(timeout=600) for p in _pair(root, root / name, "again")]
  return rcs, rcs == [0, 0] and "Resuming from the checkpoint of step" in (root / f"again{log}").read_text()


def _kill_one(root, name: str, killed: int, said: str, status: int | None):
  """Process `killed` of a run SIGKILLed once step 4 is saved: the survivor's one line starts with `said`
  (and its exit status is `status`, unless None: JAX's abort); then both again resume."""
  survivor = 1 - killed
  procs, failed = _pair_saved(root, name, survivor)
  if failed:
    return False, failed
  start = time.time()
  procs[killed].kill()
  try:
    procs[survivor].communicate(timeout=200)
  except subprocess.TimeoutExpired:
    procs[survivor].kill()
    return False, "the survivor still runs 200 s after the kill"
  took, text = time.time() - start, _settled(root / f"{name}{survivor}")
  lines = error_lines(text)
  named = len(lines) == 1 and lines[0].startswith(said)
  clean = not any(w in text for w in NOISE)
  rcs, resumed = _both_again(root, name, survivor)
  rc = procs[survivor].returncode
  ok = status in (None, rc) and named and clean and resumed
  seen = lines[0][:90] if lines else "no error line"
  return ok, f"survivor exit {rc} {took:.1f} s after the kill: {seen}; again: exits {rcs}"


def case_kill_one_of_two(root, ref, results):
  """Two processes of one run; process 1 SIGKILLed once step 4 is saved; then both started again."""
  return _kill_one(root, "kill_one", 1, "error: process 1 of 2 is gone", status=1)


def case_kill_coordinator(root, ref, results):
  """Two processes of one run; process 0 (the coordinator) SIGKILLed once step 4 is saved; both again."""
  said = "error: process 0 (the coordinator at 127.0.0.1:"
  return _kill_one(root, "kill_coordinator", 0, said, status=None)


def case_process_id_twice(root, ref, results):
  """Two processes of one run; once step 4 is saved, a third started with --process_id=1 too; both again."""
  procs, failed = _pair_saved(root, "id_twice", 0)
  if failed:
    return False, failed
  port = next(a for a in procs[0].args if a.startswith("--coordinator_address=")).rpartition(":")[2]
  flags = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1"]
  flags += ["--local_device_count=1", "--initialization_timeout=20"]
  third = run(command(root / "id_twice", CONFIG, *flags))
  for p in procs:
    p.communicate(timeout=200)
  texts = [_settled(root / f"id_twice{i}") for i in range(2)]
  said = [error_lines(t) for t in texts]
  named = all(len(s) == 1 and s[0].startswith("error: a second process connected as process 1") for s in said)
  clean = not any(w in t for t in texts for w in NOISE)
  third_lines = error_lines(third.stderr)
  rcs, resumed = _both_again(root, "id_twice", 0)
  ok = named and clean and third.returncode == 1 and len(third_lines) == 1 and resumed
  seen = said[0][0][:80] if said[0] else "no error line"
  return ok, (
    f"exits {[p.returncode for p in procs]}: {seen}; the third: exit {third.returncode}, "
    f"{(third_lines or [''])[0][:60]}; again: exits {rcs}"
  )


# Two processes meet; process 1 is SIGKILLed; process 0 waits inside the coordination service (as at
# orbax's barrier before a save completes), where only the service's heartbeat timeout (100 s) ends it.
WAIT_INSIDE = """
import os, signal, sys
import jax
from jax.experimental import multihost_utils
from perceiver_jax.training import distributed
port, index = sys.argv[1:]
distributed.initialize(f"127.0.0.1:{port}", 2, int(index), initialization_timeout=20)
multihost_utils.sync_global_devices("start")
if index == "1":
  os.kill(os.getpid(), signal.SIGKILL)
with distributed.naming_lost_processes():  # As the entry points do.
  jax._src.distributed.global_state.client.wait_at_barrier("never", 400_000)
"""


def case_lost_while_waiting(root, ref, results):
  """Process 1 of two SIGKILLed while process 0 waits at a barrier of the coordination service (~100 s)."""
  port = _free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", WAIT_INSIDE, str(port), str(i)],
      cwd=ROOT,
      env=env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  start = time.time()
  out = procs[0].communicate(timeout=300)[0]
  procs[1].wait(timeout=60)
  lines = error_lines(out)
  named = len(lines) == 1 and lines[0].startswith(
    "error: process 1 of 2 is gone: it stopped sending heartbeats"
  )
  clean = not any(w in out for w in NOISE)
  seen = lines[0][:90] if lines else "no error line"
  return named and clean, f"exit {procs[0].returncode} {time.time() - start:.0f} s after the start: {seen}"


def case_two_process_id_0(root, ref, results):
  """Two processes of one run both given --process_id=0, the second 5 s after the first."""
  flags = [
    f"--coordinator_address=127.0.0.1:{_free_port()}",
    "--num_processes=2",
    "--process_id=0",
    "--local_device_count=1",
    "--initialization_timeout=20",
  ]
  first = subprocess.Popen(
    command(root / "id0", CONFIG, *flags), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  time.sleep(5)  # The first serves the coordination service by then.
  second = run(command(root / "id0", CONFIG, *flags))
  first_err = first.communicate(timeout=120)[1].decode()
  lines, first_lines = error_lines(second.stderr), error_lines(first_err)
  ok = second.returncode == 1 and len(lines) == 1 and "--process_id=0" in lines[0]
  ok = ok and first.returncode == 1 and len(first_lines) == 1 and "Check failure" not in first_err
  seen, first_seen = lines[0][:100] if lines else "no error line", (first_lines or [""])[0][:60]
  return ok, f"second exit {second.returncode}: {seen}; first: exit {first.returncode}, {first_seen}"


def case_sigterm_at_start_up(root, ref, results):
  """SIGTERM as soon as experiments/train.py handles it (its first lines, before JAX is imported)."""
  proc = subprocess.Popen(
    command(root / "start_up", CONFIG), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  status = pathlib.Path(f"/proc/{proc.pid}/status")
  deadline = time.time() + 60
  while proc.poll() is None and time.time() < deadline:
    caught = int(next(x for x in status.read_text().splitlines() if x.startswith("SigCgt:")).split()[1], 16)
    if caught >> (signal.SIGTERM - 1) & 1:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGTERM)
  stderr = proc.communicate(timeout=60)[1].decode()
  lines = stderr.splitlines()
  ok = proc.returncode == 143 and len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM")
  return ok, f"exit {proc.returncode}: {lines[:2]}"


def case_damaged_step_metadata(root, ref, results):
  """Step 12's `_CHECKPOINT_METADATA` (which holds its checksum) torn in half; the run again."""
  workdir = fresh(root, ref, "metadata")
  metadata = workdir / "checkpoints" / "12" / "_CHECKPOINT_METADATA"
  text = metadata.read_text()
  metadata.write_text(text[: len(text) // 2])
  done, again = run_again(workdir)
  damaged = "Checkpoint of step 12" in done.stderr and "is damaged" in done.stderr
  ok = damaged and again.get("params_checksum") == results["params_checksum"]
  return ok, f"exit {done.returncode}; damaged noticed: {damaged}; same parameters: {ok}"


CASES = {name[len("case_") :]: value for name, value in dict(globals()).items() if name.startswith("case_")}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
  parser.add_argument("--keep", default=None, help="a directory to keep the workdirs in (default: none)")
  args = parser.parse_args()
  names = [c for c in args.cases.split(",") if c]
  unknown = [c for c in names if c not in CASES]
  if unknown:
    parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
  root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="break_runs_"))
  root.mkdir(parents=True, exist_ok=True)
  ref = root / "reference"
  if not (ref / "results.json").exists():
    done = run(command(ref, CONFIG))
    if done.returncode:
      print(f"the reference run failed: {done.stderr[-2000:]}")
      return 1
  results = json.loads((ref / "results.json").read_text())
  failed = 0
  for name in names:
    start = time.time()
    try:
      ok, seen = CASES[name](root, ref, results)
    except Exception as e:  # noqa: BLE001  A case that breaks is a failed case; go on with the others.
      ok, seen = False, f"{type(e).__name__}: {e}"
    failed += not ok
    print(f"{name:28s} {'PASS' if ok else 'FAIL'} ({time.time() - start:.0f} s)  {seen}", flush=True)
  if not args.keep:
    shutil.rmtree(root, ignore_errors=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
