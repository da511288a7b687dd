"""`train.profile_steps`: a trace of a few steps in the workdir, where TensorBoard's profile plugin looks.

Run in a fresh process: jax.profiler's start_trace crashes a process that has loaded libtpu without a TPU
(as the TPU compile tests do in this suite's workers), which a real run never does.
"""

import sys

import pytest
from conftest import child_env, run


@pytest.mark.slow
def test_profile_steps_trace_the_train_step_into_the_workdir(tmp_path):
  cmd = [
    sys.executable,
    "experiments/train.py",
    "--config=configs/digits.py:runlocal",
    "--config.train.num_steps=6",
    "--config.train.log_every=2",
    "--config.train.eval_every=6",
    "--config.train.profile_steps=3",
    f"--workdir={tmp_path}",
  ]
  proc = run(cmd, child_env(devices=None))
  assert proc.returncode == 0, proc.stderr[-3000:]
  traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
  # One trace, of the train step (steps 2..4, after the first compile); profile_steps=0 (the default) writes
  # none: test_train.py::test_short_digits_run_learns.
  assert len(traces) == 1 and b"train_step" in traces[0].read_bytes()
