"""The pod and SLURM launchers run as written, against stand-in `gcloud` and `srun` on this machine.

The stand-in `gcloud compute tpus tpu-vm ssh --worker=all --command=C` runs C once per worker (2 workers,
local processes, each with `TPU_WORKER_ID` and its own `hostname`) and fails when any of them fails, as
gcloud does. A pod finds its hosts through the TPU metadata server, which this machine lacks, so the
`PYTHON` the launcher is given adds the explicit flags of 2 processes on 127.0.0.1. The stand-in `srun`
starts 2 tasks with SLURM's variables, and jax.distributed finds the cluster by itself from them.
"""

import json
import os
import random
import socket
import stat
import subprocess
import sys

import jax
import pytest
from conftest import ROOT, TINY, child_env

from perceiver_jax.tools import sweep

# Integration tests: subprocesses, TPU compiles or a trained reference run.
pytestmark = pytest.mark.slow

CONFIG = f"--config=configs/digits.py:{TINY},num_steps=4,checkpoint.every=4,log_every=2,eval_every=4"
RUN = (CONFIG, "--notensorboard")

GCLOUD = """#!/bin/bash
# Stand-in: gcloud compute tpus tpu-vm ssh NAME --zone=Z --worker=all --command=C
echo "gcloud $*" >> "$STANDIN_LOG"
for arg in "$@"; do case "$arg" in --command=*) command="${arg#--command=}" ;; esac; done
pids=()
for i in 0 1; do
  mkdir -p "$STANDIN_ROOT/bin$i"
  printf '#!/bin/sh\\necho worker%s\\n' $i > "$STANDIN_ROOT/bin$i/hostname"
  chmod +x "$STANDIN_ROOT/bin$i/hostname"
  TPU_WORKER_ID=$i PATH="$STANDIN_ROOT/bin$i:$PATH" bash -c "$command" > "$STANDIN_ROOT/worker$i.out" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$STANDIN_ROOT"/worker*.out
exit $status
"""

# The PYTHON of the pod launcher here: the real interpreter plus what the pod's metadata would provide.
POD_PYTHON = """#!/bin/sh
exec "{python}" "$@" --coordinator_address=127.0.0.1:{port} --num_processes=2 --process_id=$TPU_WORKER_ID \\
  --local_device_count=1 --initialization_timeout=120
"""

SRUN = """#!/bin/bash
# Stand-in: srun [options] COMMAND...; 2 tasks on this machine. STANDIN_SRUN_NOOP=1: start nothing.
echo "srun $*" >> "$STANDIN_LOG"
while [[ "$1" == -* ]]; do shift; done
[[ "${STANDIN_SRUN_NOOP:-0}" == 1 ]] && exit 0
pids=()
for i in 0 1; do
  SLURM_STEP_NODELIST=127.0.0.1 SLURM_NTASKS=2 SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NUM_NODES=1 \\
    "$@" > "$STANDIN_ROOT/task$i.out" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$STANDIN_ROOT"/task*.out
exit $status
"""
SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$STANDIN_LOG"
"""


def _script(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


def _free_port(low=1024, high=65535) -> int:
  while True:
    port = random.randint(low, high)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
        return port
      except OSError:
        continue


def _env(tmp_path, **extra):
  bin_dir = tmp_path / "standin_bin"
  bin_dir.mkdir(exist_ok=True)
  for name, text in (("gcloud", GCLOUD), ("srun", SRUN), ("scontrol", SCONTROL)):
    _script(bin_dir / name, text)
  env = child_env(
    devices=None, STANDIN_LOG=str(tmp_path / "standin.log"), STANDIN_ROOT=str(tmp_path), **extra
  )
  env["PATH"] = f"{bin_dir}:{env['PATH']}"
  return env


def _pod(tmp_path, *args, **extra):
  python = _script(tmp_path / "pod_python", POD_PYTHON.format(python=sys.executable, port=_free_port()))
  repo = tmp_path / "repo"  # The repository on the "hosts": its logs/ stay out of the real one.
  if not repo.exists():
    repo.mkdir()
    for name in ("experiments", "configs"):
      (repo / name).symlink_to(ROOT / name)
  env = _env(tmp_path, TPU_NAME="pod", ZONE="zone-a", REPO_DIR=str(repo), PYTHON=str(python), **extra)
  cmd = ["bash", str(ROOT / "scripts" / "launch_tpu_pod.sh"), *args]
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_pod_launcher_trains_on_two_workers_and_fails_when_one_fails(tmp_path):
  workdir = tmp_path / "run"
  done = _pod(tmp_path, *RUN, f"--workdir={workdir}")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 4
  out = (tmp_path / "worker0.out").read_text() + (tmp_path / "worker1.out").read_text()
  assert "Process 0 of 2" in out and "Process 1 of 2" in out
  # The flag is an argument of experiments/train.py, never the entry script.
  assert "--command=cd " in (tmp_path / "standin.log").read_text() and "train.py --config=" in out + str(
    (tmp_path / "standin.log").read_text()
  )
  # Evaluating through an explicit entry script: the same parameters, read back by both workers.
  evaluated = _pod(tmp_path, "experiments/evaluate.py", f"--workdir={workdir}")
  assert evaluated.returncode == 0, evaluated.stdout[-3000:]
  eval_results = json.loads((workdir / "eval_results.json").read_text())
  assert eval_results["params_checksum"] == results["params_checksum"]
  # A failure on the workers (an unknown config field) fails the launcher, detached or not.
  bad = (f"--config=configs/digits.py:{TINY},no_such_field=1", f"--workdir={tmp_path / 'bad'}")
  assert _pod(tmp_path, *bad).returncode != 0
  detached = _pod(tmp_path, *bad, DETACH="1", DETACH_CHECK_S="25")
  assert detached.returncode == 1, detached.stdout[-2000:]
  assert "no_such_field" in detached.stdout and "exit status" in detached.stdout
  assert {"worker0.log", "worker1.log"} <= set(os.listdir(tmp_path / "repo" / "logs"))


# The sweep's pod PYTHON: as POD_PYTHON, but host 1 of the run of seed=1 fails at once (its peer then
# gives up after --initialization_timeout).
SWEEP_POD_PYTHON = """#!/bin/sh
case "$*" in *seed=1*) [ "$TPU_WORKER_ID" = 1 ] && echo "worker 1 failed" && exit 3 ;; esac
exec "{python}" "$@" --coordinator_address=127.0.0.1:{port} --num_processes=2 --process_id=$TPU_WORKER_ID \\
  --local_device_count=1 --initialization_timeout=10
"""


def test_sweep_tpu_pod_launcher_trains_each_run_on_the_pod_and_fails_with_a_host(tmp_path, monkeypatch):
  python = _script(tmp_path / "pod_python", SWEEP_POD_PYTHON.format(python=sys.executable, port=_free_port()))
  repo = tmp_path / "repo"
  repo.mkdir()
  for name in ("experiments", "configs"):
    (repo / name).symlink_to(ROOT / name)
  env = _env(tmp_path, TPU_NAME="pod", ZONE="zone-a", REPO_DIR=str(repo), PYTHON=str(python))
  jax.devices()  # This process's backend starts with the suite's 8 devices, not the children's flags below.
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv("DETACH", raising=False)
  monkeypatch.chdir(ROOT)  # Where the printed scripts/launch_tpu_pod.sh commands run from.
  echoed = []
  config = CONFIG.removeprefix("--config=")
  status = sweep.main(
    config, ["seed=0,1"], str(tmp_path / "runs"), "tpu_pod", "t.py", ["--notensorboard"], echo=echoed.append
  )
  assert status == 1, echoed
  finished = json.loads((tmp_path / "runs" / "seed=0" / "results.json").read_text())
  assert finished["step"] == 4
  assert not (tmp_path / "runs" / "seed=1" / "results.json").exists()
  # One launch_tpu_pod.sh per run, the command of docs/scale_out.md; both reached gcloud's two workers.
  assert [e.split()[0] for e in echoed[:1]] == ["scripts/launch_tpu_pod.sh"]
  assert echoed[-1] == "# 1 of 2 runs failed: seed=1" and "# seed=1: exit status 1" in echoed
  log = (tmp_path / "standin.log").read_text()
  assert log.count("--worker=all") == 2 and "seed=0" in log and "seed=1" in log
  # DETACH=1 (every run on the pod at once) is refused.
  monkeypatch.setenv("DETACH", "1")
  with pytest.raises(ValueError, match="DETACH=1"):
    sweep.main(config, ["seed=0,1"], str(tmp_path / "runs"), "tpu_pod", "t.py")


def test_slurm_script_trains_two_tasks_and_requeues_an_unfinished_run(tmp_path):
  port = _free_port(65535 - 2**12 + 1)
  job_id = str(port - (65535 - 2**12 + 1))  # jax.distributed's SLURM port: 61440 + job id mod 4096.
  workdir = tmp_path / "run"
  env = _env(tmp_path, SLURM_JOB_ID=job_id, SLURM_SUBMIT_DIR=str(ROOT), PYTHON=sys.executable)
  script = str(ROOT / "scripts" / "slurm_multinode_gpu.sbatch")
  args = [CONFIG, "--local_device_count=1", "--notensorboard", "--workdir", str(workdir)]
  done = subprocess.run(
    ["bash", script, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert json.loads((workdir / "results.json").read_text())["step"] == 4
  assert "Initializing jax.distributed (slurm)" in (tmp_path / "task1.out").read_text()
  assert "scontrol" not in (tmp_path / "standin.log").read_text()  # Finished: nothing to requeue.
  # A run that stopped without results.json (here: srun started nothing) is requeued, --workdir W or =W.
  for form in (["--workdir", str(tmp_path / "a")], [f"--workdir={tmp_path / 'b'}"]):
    env["STANDIN_SRUN_NOOP"] = "1"
    stopped = subprocess.run(
      ["bash", script, CONFIG, *form], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert stopped.returncode == 0 and "requeueing job" in stopped.stdout
  assert (tmp_path / "standin.log").read_text().count(f"scontrol requeue {job_id}") == 2
