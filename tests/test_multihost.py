"""Multi-process training: 2 processes x 2 CPU devices over gloo against 1 process x 4 devices.

Both are subprocesses of experiments/train.py (through the helper entry point `conftest.HELPER`), with
`--local_device_count` giving each its devices. The 2-process run is preempted by a SIGTERM to process 1
only: both processes must agree to stop at the same step, save, and resume from it when restarted.
SGD keeps the comparison with the 4-device run tight: the two sum gradients over the 4 devices in a
different order (gloo across processes, XLA within one), and Adam would turn the resulting last-bit
differences in near-zero gradients (the attention key biases have zero gradient) into full-size steps.
"""

import json
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, TINY, child_env, steps, train_command

from perceiver_jax.training import distributed, train

CONFIG = (
  f"--config=configs/digits.py:{TINY},num_steps=10,optimizer.name=sgd,learning_rate=0.1,"
  "schedule=constant,warmup_steps=0"
)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_pair(workdir, logs, **env_extra) -> list[subprocess.Popen]:
  port = free_port()
  procs = []
  for i in range(2):
    cmd = train_command(
      workdir,
      CONFIG,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
      "--local_device_count=2",
    )
    with open(logs[i], "w") as log:
      procs.append(
        subprocess.Popen(cmd, cwd=ROOT, env=child_env(devices=None, **env_extra), stdout=log, stderr=log)
      )
  return procs


def wait_all(procs, logs, timeout=300) -> list[str]:
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()
  texts = [log.read_text() for log in logs]
  for p, text in zip(procs, texts, strict=True):
    assert p.returncode == 0, text[-3000:]
  return texts


@pytest.mark.slow
def test_two_processes_agree_on_preemption_and_match_four_devices(tmp_path):
  workdir, ref_dir = tmp_path / "run", tmp_path / "reference"
  logs = [tmp_path / "log0", tmp_path / "log1"]
  # The 4-device reference runs meanwhile: it compiles while the pair sleeps on its slow batches.
  ref_proc = subprocess.Popen(
    train_command(ref_dir, CONFIG, "--local_device_count=4"),
    cwd=ROOT,
    env=child_env(devices=None),
    stdout=subprocess.DEVNULL,
    stderr=(ref_log := open(tmp_path / "ref_log", "w")),
  )
  pair = start_pair(workdir, logs, TEST_SLOW_FROM=3)
  try:
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "4").exists():
      assert all(p.poll() is None for p in pair) and time.time() < deadline, logs[0].read_text()[-3000:]
      time.sleep(0.05)
    pair[1].send_signal(signal.SIGTERM)  # Process 1 only: process 0 learns it from the coordination service.
    texts = wait_all(pair, logs)
  finally:
    for p in pair:
      p.kill()
  stopped = [re.findall(r"Preempted: saved the checkpoint of step (\d+)", t) for t in texts]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
  stop = int(stopped[0][0])
  assert 4 < stop < 10 and steps(workdir)[-1] == stop
  # JAX's preemption sync, not a signal handler of ours, made both stop after the same step.
  assert all(f"Preemption notice: every process saves and stops after step {stop}." in t for t in texts)
  assert all("Received SIGTERM" not in t for t in texts)
  for i, text in enumerate(texts):
    assert f"Process {i} of 2: 2 local devices of 4." in text

  texts = wait_all(start_pair(workdir, logs), logs)
  checksums = [re.findall(r"params_checksum ([0-9a-f]{64}) at step 10", t) for t in texts]
  assert all(f"Resuming from the checkpoint of step {stop}" in t for t in texts)
  assert len(checksums[0]) == 1 and checksums[0] == checksums[1]  # Bitwise equal on both processes.
  results = json.loads((workdir / "results.json").read_text())  # Written by process 0 alone.
  assert results["params_checksum"] == checksums[0][0] and results["step"] == 10

  assert ref_proc.wait(timeout=300) == 0, (tmp_path / "ref_log").read_text()[-3000:]
  ref_log.close()
  ref = json.loads((ref_dir / "results.json").read_text())
  two, four = train.load_run(str(workdir)), train.load_run(str(ref_dir))
  assert two.step == four.step == 10
  initial = train.load_run(str(ref_dir), step=4).state.params
  moved = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(four.state.params), jax.tree.leaves(initial), strict=True)
  )
  assert moved > 1e-3  # Training moved the parameters, so the agreement below is not vacuous.
  for a, b in zip(jax.tree.leaves(two.state.params), jax.tree.leaves(four.state.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert two.config.to_dict() == four.config.to_dict()
  print("2x2 and 1x4 parameters bitwise equal:", ref["params_checksum"] == checksums[0][0])


def test_cluster_is_detected_only_inside_a_multi_task_step_or_on_tpu_chips(monkeypatch):
  for var in (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
  ):
    monkeypatch.delenv(var, raising=False)
  # The TPU chips this machine shows: none, whatever machine the test runs on.
  chips = []
  monkeypatch.setattr(distributed.glob, "glob", lambda pattern: list(chips))
  monkeypatch.setattr(distributed, "_initialized", False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: pytest.fail("initialize was called"))
  assert distributed.detected_cluster() is None
  assert distributed.initialize() is False
  monkeypatch.setenv("SLURM_JOB_ID", "7")  # A batch script's own shell: not a task of a multi-task step.
  monkeypatch.setenv("SLURM_NTASKS", "16")
  assert distributed.detected_cluster() is None
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
  assert distributed.detected_cluster() == "slurm"
  for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NODELIST"):
    monkeypatch.delenv(var)
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
  assert distributed.detected_cluster() == "ompi"
  monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
  chips.append("/dev/accel0")  # A Cloud TPU VM: chips (and libtpu, in the test extra).
  assert distributed.detected_cluster() == "tpu"
  chips.clear()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host0,host1")  # A GKE TPU pod names its hosts.
  assert distributed.detected_cluster() == "tpu"


def test_explicit_coordinator_starts_gloo_and_jax_distributed(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed, "_initialized", False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *args: calls.append(args))
  assert distributed.initialize("127.0.0.1:1234", 2, 1)
  assert calls == [
    ("jax_cpu_collectives_implementation", "gloo"),
    {
      "coordinator_address": "127.0.0.1:1234",
      "num_processes": 2,
      "process_id": 1,
      # jax.distributed aborts later than the one-line error of our own deadline.
      "initialization_timeout": distributed.DEFAULT_INITIALIZATION_TIMEOUT + distributed._JAX_GRACE_S,
    },
  ]
  assert distributed.initialize("127.0.0.1:1234", 2, 1) and len(calls) == 2  # Only once per process.


# Start-up of N processes: initialize (timeout 3 s), then compare a config with `num_steps` from argv.
STARTUP = """
import sys
import ml_collections
from perceiver_jax.training import distributed
port, count, index, steps = sys.argv[1:]
distributed.initialize(f"127.0.0.1:{port}", int(count), int(index), initialization_timeout=3)
distributed.check_same_config(ml_collections.ConfigDict({"train": {"num_steps": int(steps)}, "seed": 0}))
print("same config")
"""


def _startup(*argvs):
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", STARTUP, *map(str, argv)],
      cwd=ROOT,
      env=child_env(devices=None),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for argv in argvs
  ]
  return [(p.wait(timeout=120), p.stdout.read()) for p in procs]


@pytest.mark.slow
def test_start_up_fails_fast_with_one_line():
  start = time.time()
  # A lone process 0 of 2, and a lone process 1 of 2 whose coordinator is not there.
  (rc0, out0), (rc1, out1) = _startup((free_port(), 2, 0, 5), (free_port(), 2, 1, 5))
  assert rc0 == rc1 == 1 and time.time() - start < 60
  assert "error: jax.distributed did not start within 3 s" in out0 and "process 1 did not connect" in out0
  assert "process 0 (the coordinator) does not answer at 127.0.0.1:" in out1
  assert "Traceback" not in out0 + out1
  # Two processes that do meet but with different configs both stop, naming the field.
  port = free_port()
  (rc0, out0), (rc1, out1) = _startup((port, 2, 0, 5), (port, 2, 1, 6))
  message = "process 1 differs from process 0 in train.num_steps (5 vs 6)"
  assert rc0 == rc1 == 1 and message in out0 and message in out1, out0[-2000:]
  port = free_port()
  assert [rc for rc, _ in _startup((port, 2, 0, 5), (port, 2, 1, 5))] == [0, 0]


@pytest.mark.slow
def test_processes_given_different_workdirs_stop_at_once_naming_the_flag(tmp_path):
  """They used to train until the first save, then wait there for each other, silently, for 20 minutes."""
  port, procs = free_port(), []
  for i in range(2):
    cmd = train_command(
      tmp_path / f"w{i}",
      CONFIG,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
      "--local_device_count=1",
    )
    procs.append(
      subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(devices=None),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  message = f"process 1 differs from process 0 in --workdir ('{tmp_path / 'w0'}' vs '{tmp_path / 'w1'}')"
  assert [p.returncode for p in procs] == [1, 1] and all(message in out for out in outs), outs[0][-2000:]
  assert not (tmp_path / "w0").exists() and not (tmp_path / "w1").exists()


# Two processes meet, agree once over gloo; then process 1 is SIGKILLed and process 0 agrees again.
LOSE_ONE = """
import os, signal, sys
from jax.experimental import multihost_utils
from perceiver_jax.training import distributed
port, index = sys.argv[1:]
distributed.initialize(f"127.0.0.1:{port}", 2, int(index), initialization_timeout=20)
multihost_utils.sync_global_devices("start")
if index == "1":
  os.kill(os.getpid(), signal.SIGKILL)
with distributed.naming_lost_processes(wait_s=2):
  multihost_utils.sync_global_devices("after")
print("no process was lost")
"""


@pytest.mark.slow
def test_a_lost_process_is_named_in_one_line_by_the_survivor():
  """The survivor used to print a gloo error, wait ~80 s at shutdown, then abort with a C++ trace."""
  port = free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", LOSE_ONE, str(port), str(i)],
      cwd=ROOT,
      env=child_env(devices=None),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  try:
    out = procs[0].communicate(timeout=60)[0]
  finally:
    for p in procs:
      p.kill()
  lines = [line for line in out.splitlines() if line.startswith("error: ")]
  assert procs[0].returncode == 1 and len(lines) == 1, out[-3000:]
  assert lines[0].startswith("error: process 1 of 2 is gone: it did not answer within 2 s"), lines[0]
  assert "Start all 2 processes again with the same command" in lines[0]
  assert "Traceback" not in out and "Check failure stack trace" not in out


@pytest.mark.slow
def test_two_processes_given_process_id_0_stop_naming_the_flag():
  """The second used to take over the coordinator's port: JAX aborted the first in C++."""
  port = free_port()
  first = subprocess.Popen(
    [sys.executable, "-c", LOSE_ONE, str(port), "0"],  # Waits up to 20 s for its process 1.
    cwd=ROOT,
    env=child_env(devices=None),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    deadline = time.time() + 60
    while not _listening(port):  # The first process 0 serves the coordination service.
      assert first.poll() is None and time.time() < deadline, first.stdout.read()[-2000:]
      time.sleep(0.05)
    ((rc, out),) = _startup((port, 2, 0, 5))
  finally:
    first.kill()
  lines = [line for line in out.splitlines() if line.startswith("error: ")]
  assert rc == 1 and len(lines) == 1, out[-2000:]
  assert "was given --process_id=0, but port" in lines[0]
  assert "Give every process its own --process_id" in lines[0]
  assert "Traceback" not in out


def _listening(port: int) -> bool:
  with socket.socket() as s:
    return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_save_in_flight_is_not_waited_for_once_a_process_is_lost(monkeypatch):
  """Waiting for it (orbax's barrier needs every process) held the survivor until JAX aborted it."""
  from perceiver_jax.training import checkpoint

  closed = []

  class Manager:
    def close(self):
      closed.append(True)

  monkeypatch.setattr(distributed, "_initialized", True)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  lost = RuntimeError("UNKNOWN: Gloo all-reduce failed: Connection closed by peer [127.0.0.1]:4242")
  for error, waits in ((lost, False), (ValueError("train.num_steps must be positive"), True)):
    closed.clear()
    with pytest.raises(type(error)):
      try:
        raise error
      finally:
        checkpoint.close(Manager())
    assert closed == ([True] if waits else []), error
  checkpoint.close(Manager())  # No exception in flight: waits.
  assert closed == [True, True]
