"""Multi-process training: 2 processes x 2 CPU devices over gloo against 1 process x 4 devices.

Both are subprocesses of experiments/train.py (through the helper entry point `conftest.HELPER`), with
`--local_device_count` giving each its devices. The 2-process run is preempted by a SIGTERM to process 1
only: both processes must agree to stop at the same step, save, and resume from it when restarted.
SGD keeps the comparison with the 4-device run tight: the two sum gradients over the 4 devices in a
different order (gloo across processes, XLA within one), and Adam would turn the resulting last-bit
differences in near-zero gradients (the attention key biases have zero gradient) into full-size steps.
"""

import json
import os
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


# Process 0 (the coordinator) is SIGKILLed once both have met; process 1 then calls across processes.
LOSE_COORDINATOR = LOSE_ONE.replace('if index == "1":', 'if index == "0":')
# Processes 0 and 1 meet and wait; a second process given --process_id=1 then connects.
WAIT = """
import sys, time
from jax.experimental import multihost_utils
from perceiver_jax.training import distributed
port, index = sys.argv[1:]
distributed.initialize(f"127.0.0.1:{port}", 2, int(index), initialization_timeout=10)
multihost_utils.sync_global_devices("start")
print("met", flush=True)
time.sleep(30)  # The third process ends the run before.
print("not stopped")
"""


def _spawn(script, port, index):
  return subprocess.Popen(
    [sys.executable, "-c", script, str(port), str(index)],
    cwd=ROOT,
    env=child_env(devices=None),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,  # The pipe ends once the process and its stderr filter both have.
    text=True,
  )


def _one_error_line(out: str) -> str:
  lines = [line for line in out.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, out[-3000:]
  for noise in ("Check failure stack trace", "Fatal Python error", "Traceback", "Extension modules"):
    assert noise not in out, (noise, out[-3000:])
  assert not re.search(r"^F\d{4} ", out, re.M), out[-3000:]  # JAX's FATAL log line.
  return lines[0]


@pytest.mark.slow
def test_a_lost_coordinator_is_named_in_one_line_by_the_survivor():
  """JAX aborts the survivor from C++ (no Python runs); stderr_guard answers its report with one line."""
  port = free_port()
  procs = [_spawn(LOSE_COORDINATOR, port, i) for i in range(2)]
  try:
    out = procs[1].communicate(timeout=60)[0]
  finally:
    for p in procs:
      p.kill()
  line = _one_error_line(out)
  assert procs[1].returncode != 0
  assert line.startswith(f"error: process 0 (the coordinator at 127.0.0.1:{port}) is gone"), line
  assert "process 1 of 2" in line and "Start all 2 processes again with the same command" in line


@pytest.mark.slow
def test_a_process_id_given_twice_stops_the_run_naming_the_flag():
  """The newcomer under a taken id makes JAX abort every process of the run; each says why in one line."""
  port = free_port()
  procs = [_spawn(WAIT, port, i) for i in range(2)]
  try:
    before = [list(iter(p.stdout.readline, "met\n")) for p in procs]  # Both run when the third comes.
    procs.append(_spawn(WAIT, port, 1))
    outs = ["".join(b) + p.communicate(timeout=60)[0] for b, p in zip([*before, []], procs, strict=True)]
  finally:
    for p in procs:
      p.kill()
  third, third_out = procs.pop(), outs.pop()
  for index, out in enumerate(outs):
    line = _one_error_line(out)
    assert line.startswith("error: a second process connected as process 1 while process 1 of 2 was running")
    assert f"(this is process {index})" in line and "Give every process its own --process_id (0 .. 1)" in line
  assert third.returncode == 1 and "did not start within 10 s" in _one_error_line(third_out)


# What JAX 0.10.2's client wrote on process 0 when process 1 was SIGKILLed while process 0 waited at a
# barrier (it aborts 100 s later, when the heartbeats are missed), dump shortened.
HEARTBEATS_MISSED = """\
I1204 22:20:21.861 17894 train.py:1] step 20/40
E1204 22:22:02.079889   17894 coordination_service.cc:1549] [4694] Use error polling to propagate the \
following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, \
eviction) to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']
E1204 22:22:02.080320   17905 coordination_service_agent.cc:289] Polled an error from coordination service \
(this can be an error from this or another task).
F1204 22:22:02.080389   17905 client.h:80] Terminating process because the JAX distributed service detected \
fatal errors. This most likely indicates that another task died; see the other task logs for more details. \
absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, \
eviction) to debug further.

RPC: /xla.coordination.CoordinationService/PollForError
*** Check failure stack trace: ***
    @     0x7f8269e40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
Fatal Python error: Aborted

Thread 0x00007f5302c12b80 (most recent call first):
  File "/work/main/perceiver_jax/training/train.py", line 270 in _train
"""


def _guarded(text: str, pause_after: str | None = None) -> tuple[str, float]:
  """`text` written through stderr_guard's filter process as a watched process would: (what came out, s)."""
  from perceiver_jax.training import stderr_guard

  acks, ack_w = os.pipe()
  facts = json.dumps({"me": 0, "count": 2, "address": "10.0.0.1:8476", "ack": ack_w})
  proc = subprocess.Popen(
    [sys.executable, "-I", stderr_guard.__file__, facts],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    pass_fds=(ack_w,),
  )
  os.close(ack_w)
  start = time.time()
  head, _, tail = text.partition(pause_after) if pause_after else (text, "", "")
  proc.stdin.write((head + (pause_after or "")).encode())
  proc.stdin.flush()
  if pause_after:
    time.sleep(1.5)  # Longer than the filter holds a line back.
    proc.stdin.write(stderr_guard.SYNC)  # What `drain` writes at exit: answered, not passed on.
    proc.stdin.flush()
    assert os.read(acks, 1) == b"."
    proc.stdin.write(tail.encode())
  os.close(acks)
  return proc.communicate(timeout=30)[0].decode(), time.time() - start


def test_stderr_guard_answers_missed_heartbeats_with_one_line_and_passes_the_rest_through():
  out, _ = _guarded(HEARTBEATS_MISSED)
  assert out.splitlines()[0] == "I1204 22:20:21.861 17894 train.py:1] step 20/40"
  assert len(out.splitlines()) == 2, out
  assert out.splitlines()[1].startswith(
    "error: process 1 of 2 is gone: it stopped sending heartbeats to the coordinator (killed, crashed"
  ), out
  assert out.splitlines()[1].endswith("(--verbose shows JAX's own report).")
  # The process's own line (naming_lost_processes) came first: no second one.
  own = "error: process 1 of 2 is gone (said by the process itself)\n"
  out, _ = _guarded(HEARTBEATS_MISSED.replace("E1204 22:22:02.079889", own + "E1204 22:22:02.079889", 1))
  assert out.splitlines()[1:] == [own.strip()], out
  # Without FATAL, every line comes out as it went in, the held-back ones too, and a last line without
  # its end; a coordination-service error that nothing follows is not held for ever.
  plain = HEARTBEATS_MISSED.split("F1204")[0] + "[Gloo] no newline"
  out, _ = _guarded(plain)
  assert out == plain
  out, took = _guarded(plain, pause_after="task).\n")
  assert out == plain and took < 10


def test_a_barrier_failed_on_missed_heartbeats_names_that_process_without_asking_again(monkeypatch, capsys):
  """Asking (a barrier of a service already in error) would fail as if the coordinator were gone."""
  monkeypatch.setattr(distributed, "_initialized", True)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  monkeypatch.setattr(distributed, "_lost_processes", lambda wait_s: pytest.fail("asked the service again"))

  def exit_(status):
    raise SystemExit(status)

  monkeypatch.setattr(distributed.os, "_exit", exit_)
  error = RuntimeError(
    "INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. This "
    "indicates that the remote task has failed, got preempted, or crashed unexpectedly."
  )
  with pytest.raises(SystemExit, match="1"), distributed.naming_lost_processes():
    raise error
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("error: process 1 of 2 is gone: it stopped sending heartbeats to the coordinator")
