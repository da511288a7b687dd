"""`StepProfiler`: traces a few train steps with jax.profiler into the workdir (`train.profile_steps`)."""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import jax
from absl import logging
from etils import epath


class StepProfiler:
  """Traces `count` train steps with jax.profiler, from the one after the first (compiling) step.

  The trace is written locally, then copied into `workdir/plugins/profile/<run>/` through epath (any
  workdir, gs:// too), where `tensorboard --logdir=WORKDIR` shows it in the profile plugin. Process 0 only.
  A profiler never ends a run: where tracing cannot start (or its trace cannot be written) one line says
  why and training goes on. A libtpu that is not the one jax pins crashes the process in start_trace
  (its profiler plugin does not match jaxlib's), so then the trace does not start at all.
  """

  def __init__(self, workdir: str, count: int, start: int, total: int):
    self.workdir, self.first, self.last = workdir, start + 2, min(start + 1 + count, total)
    self.active = count > 0 and jax.process_index() == 0 and self.first <= self.last
    self._local = None

  @staticmethod
  def _crashing_plugin(platforms: str | None) -> str | None:
    """Why jax.profiler would crash this process (a loaded libtpu plugin jax does not pin), or None.

    `platforms`: jax.config.jax_platforms; JAX loads the TPU plugin unless it names others only.
    """
    from perceiver_jax.training import toolchain

    if platforms and "tpu" not in platforms.split(","):
      return None
    return toolchain.libtpu_mismatch()

  @staticmethod
  def _first_line(error: Exception) -> str:
    """`error`'s first line (its type when it has no message), for a one-line log."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__

  def before(self, step: int) -> None:
    if not (self.active and step == self.first):
      return
    self.active = False
    if crash := self._crashing_plugin(jax.config.jax_platforms):
      logging.warning("Not profiling (train.profile_steps): %s, whose profiler would crash this run.", crash)
      return
    local = tempfile.mkdtemp(prefix="perceiver_profile_")
    try:
      jax.profiler.start_trace(local)
    except Exception as e:  # noqa: BLE001  Any reason: the run trains on without a trace.
      shutil.rmtree(local, ignore_errors=True)
      logging.warning(
        "Not profiling (train.profile_steps): the trace did not start (%s).", self._first_line(e)
      )
      return
    self._local = local

  def after(self, step: int, train_state) -> None:
    if self._local is not None and step >= self.last:
      jax.block_until_ready(train_state)
      self.close()

  def close(self) -> None:
    if self._local is None:
      return
    local, self._local = pathlib.Path(self._local), None  # A local temporary directory.
    try:
      jax.profiler.stop_trace()
      for source in sorted(p for p in local.rglob("*") if p.is_file()):
        target = epath.Path(self.workdir) / source.relative_to(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    except Exception as e:  # noqa: BLE001  A trace is not worth a run.
      logging.warning("No profile written (train.profile_steps): %s", self._first_line(e))
      return
    finally:
      shutil.rmtree(local, ignore_errors=True)
    logging.info("Profiled steps %d..%d into %s/plugins/profile.", self.first, self.last, self.workdir)
