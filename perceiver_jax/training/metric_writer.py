"""Run artefacts: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; on every other process the writer does nothing. metrics.jsonl is rewritten whole
at each write (`run_files.write_jsonl`): object stores such as GCS cannot append, and a reader never sees
half a line.
TensorBoard events go through TensorFlow's own filesystem layer (tf.summary), which reads gs://
too but only from the real Cloud Storage endpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from etils import epath

from perceiver_jax.training import run_files


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and to TensorBoard event files in `workdir/tensorboard`.

  The records already in metrics.jsonl are read when the writer is made (a torn last line dropped with a
  warning; `run_files.RunFileError` for a damaged file), and `keep_until` cuts those of steps a resume
  will log again.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, events_dir: str | None = None):
    """`events_dir` (default `workdir/tensorboard`) is handed to tf.summary as it is: any TensorFlow
    filesystem (gs://, ram://, ...), not only those of epath."""
    self.active = jax.process_index() == 0
    self._path = epath.Path(workdir) / run_files.METRICS
    self.records: list[dict[str, Any]] = run_files.read_jsonl(self._path) if self.active else []
    self._tb = None
    if self.active and tensorboard:
      import tensorflow as tf  # Imported here: only the writing process pays for it.

      tf.config.set_visible_devices([], "GPU")
      self._tf = tf
      self._tb = tf.summary.create_file_writer(events_dir or os.fspath(epath.Path(workdir) / "tensorboard"))

  def keep_until(self, step: int) -> list[dict[str, Any]]:
    """Drops the records after `step` (they will be logged again); returns the eval history up to it."""
    kept = [r for r in self.records if r.get("step", 0) <= step]
    if self.active and len(kept) < len(self.records):
      run_files.write_jsonl(self._path, kept)
    self.records = kept
    history = [
      {"step": r["step"], **{k[len("eval_") :]: v for k, v in r.items() if k.startswith("eval_")}}
      for r in kept
      if any(k.startswith("eval_") for k in r)  # Whatever the task's metrics (tasks.py).
    ]
    for entry in history:
      entry["count"] = int(entry.get("count", 0))
    return history

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    self.records.append({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
    run_files.write_jsonl(self._path, self.records)
    if self._tb is not None:
      with self._tb.as_default():
        for key, value in scalars.items():
          self._tf.summary.scalar(key, float(value), step=int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
