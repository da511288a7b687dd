"""`train.profile_steps` as a user runs it: a trace of a few steps in the workdir, where TensorBoard's
profile plugin looks, and a run that finishes.

The run gets the user's environment, not this suite's: no JAX_PLATFORMS (so JAX loads the installed
libtpu's TPU plugin, as on any host with the test extra; with a libtpu jax does not pin, its profiler
crashed the process), none of conftest.py's XLA flags or libtpu settings. The quick checks of the
fallbacks (a trace that cannot start, a libtpu that would crash) are in test_toolchain.py.
"""

import os
import re
import sys

import pytest
from conftest import TINY, run


def user_env() -> dict[str, str]:
  """This environment without what conftest.py set for the suite."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "ALLOW_MULTIPLE_LIBTPU_LOAD")}
  flags = re.sub(
    r"--xla_(force_host_platform_device_count|backend_optimization_level)=\d+", "", env.get("XLA_FLAGS", "")
  ).strip()
  env.pop("XLA_FLAGS", None)
  return {**env, **({"XLA_FLAGS": flags} if flags else {})}


@pytest.mark.slow
def test_profile_steps_trace_the_train_step_into_the_workdir(tmp_path):
  cmd = [
    sys.executable,
    "experiments/train.py",
    f"--config=configs/digits.py:{TINY}",
    "--config.train.profile_steps=3",
    f"--workdir={tmp_path}",
    "--notensorboard",
  ]
  proc = run(cmd, user_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Not profiling" not in proc.stderr and "No profile written" not in proc.stderr
  assert "Profiled steps 2..4 into" in proc.stderr
  assert (tmp_path / "results.json").exists()  # The run finished: trained 12 steps and evaluated.
  traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
  # One trace, of the train step (steps 2..4, after the first compile); profile_steps=0 (the default) writes
  # none: test_train.py::test_short_digits_run_learns.
  assert len(traces) == 1 and b"train_step" in traces[0].read_bytes()
