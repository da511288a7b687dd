"""One libtpu: the one the installed jax's `tpu` extra pins (toolchain.py), checked by the TPU compile tool
and by the profiler, which never ends a run (train._StepProfiler). Quick, in-process; the runs as users
start them are in test_compile_tpu.py and test_profiler.py."""

import importlib.metadata
import logging

import jax
import jax.numpy as jnp
import pytest

from perceiver_jax.tools import compile_tpu
from perceiver_jax.training import toolchain, train


def test_the_pinned_libtpu_is_read_from_jax_and_is_the_installed_one():
  # jax 0.10.2's `tpu` extra: libtpu==0.0.42.*; setup.py's `test` extra installs the same one.
  tpu_extra = [r for r in importlib.metadata.requires("jax") if r.startswith("libtpu") and "tpu" in r]
  assert len(tpu_extra) == 1 and toolchain.required_libtpu() in tpu_extra[0].replace(" ", "")
  assert toolchain.installed_libtpu() == importlib.metadata.version("libtpu")
  assert toolchain.libtpu_matches(toolchain.installed_libtpu(), toolchain.required_libtpu())
  assert toolchain.libtpu_mismatch() is None
  compile_tpu.check_libtpu()  # Nothing to refuse.
  # setup.py (as installed): jax pinned to the installed one, and the test extra's libtpu is the tpu extra's.
  ours = importlib.metadata.requires("perceiver-haiku-reference")
  assert f"jax=={jax.__version__}" in ours and f'jax[tpu]=={jax.__version__}; extra == "tpu"' in ours
  assert f'libtpu{toolchain.required_libtpu()}; extra == "test"' in ours


def test_another_libtpu_is_named_and_refused_unless_allowed(monkeypatch):
  assert toolchain.libtpu_matches("0.0.42.1", "==0.0.42.*")
  assert not toolchain.libtpu_matches("0.0.52", "==0.0.42.*")
  monkeypatch.setattr(toolchain, "installed_libtpu", lambda: "0.0.52")
  mismatch = toolchain.libtpu_mismatch()
  assert mismatch.startswith("libtpu 0.0.52 is installed") and toolchain.required_libtpu() in mismatch
  with pytest.raises(
    compile_tpu.LibtpuError, match=r"pip install 'libtpu==0\.0\.42\.\*'.*--allow_other_libtpu"
  ):
    compile_tpu.check_libtpu()
  compile_tpu.check_libtpu(allow_other=True)
  monkeypatch.setattr(toolchain, "installed_libtpu", lambda: None)  # No libtpu: nothing to mismatch.
  assert toolchain.libtpu_mismatch() is None


def _profile_one_step(workdir, caplog):
  profiler = train._StepProfiler(str(workdir), count=1, start=0, total=4)
  state = jnp.ones(3)
  with caplog.at_level(logging.WARNING):
    for step in range(1, 5):
      profiler.before(step)
      state = state + 1
      profiler.after(step, state)
    profiler.close()
  return [r.getMessage() for r in caplog.records if "train.profile_steps" in r.getMessage()]


def test_a_trace_that_cannot_start_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
  def refuse(path):
    raise RuntimeError("Only one profile may be run at a time.\nsecond line")

  monkeypatch.setattr(jax.profiler, "start_trace", refuse)
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: pytest.fail("stop_trace without a trace"))
  lines = _profile_one_step(tmp_path, caplog)
  assert lines == ["Not profiling (train.profile_steps): the trace did not start (Only one profile may be "
                   "run at a time.)."]  # fmt: skip
  assert not (tmp_path / "plugins").exists()


def test_a_libtpu_whose_profiler_would_crash_is_not_traced(tmp_path, monkeypatch, caplog):
  # The plugin loads unless JAX_PLATFORMS names other platforms only; a libtpu jax does not pin then
  # crashes start_trace (a segfault, which no except catches): the trace does not start.
  monkeypatch.setattr(toolchain, "installed_libtpu", lambda: "0.0.52")
  for platforms in ("", None, "tpu,cpu"):
    assert "libtpu 0.0.52" in train._StepProfiler._crashing_plugin(platforms)
  assert train._StepProfiler._crashing_plugin("cpu") is None
  # This process runs with JAX_PLATFORMS=cpu (conftest.py): as if it had loaded the plugin.
  crashing = staticmethod(lambda platforms: toolchain.libtpu_mismatch())
  monkeypatch.setattr(train._StepProfiler, "_crashing_plugin", crashing)
  monkeypatch.setattr(jax.profiler, "start_trace", lambda path: pytest.fail("start_trace called"))
  lines = _profile_one_step(tmp_path, caplog)
  assert len(lines) == 1 and "libtpu 0.0.52 is installed" in lines[0] and "would crash" in lines[0]
