"""Run artefacts: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; on every other process the writer does nothing. metrics.jsonl goes through
etils.epath, so the workdir may be on gs://: objects there cannot be appended to, so the file is written
whole (to a temporary file, then renamed) at every logged step. TensorBoard events go through TensorFlow's
own filesystem layer (tf.summary), which reads gs:// too but only from the real Cloud Storage endpoint.
"""

from __future__ import annotations

import json
import os

import jax
from etils import epath


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and to TensorBoard event files in `workdir/tensorboard`."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._path = epath.Path(workdir) / "metrics.jsonl"
    self._lines: list[str] | None = None  # The file's lines, read once (a resumed run keeps its own).
    self._tb = None
    if self.active and tensorboard:
      import tensorflow as tf  # Imported here: only the writing process pays for it.

      tf.config.set_visible_devices([], "GPU")
      self._tf = tf
      self._tb = tf.summary.create_file_writer(os.fspath(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    if self._lines is None:
      self._lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
    self._lines.append(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
    tmp = self._path.parent / (self._path.name + ".tmp")
    tmp.write_text("".join(self._lines))
    tmp.replace(self._path)
    if self._tb is not None:
      with self._tb.as_default():
        for key, value in scalars.items():
          self._tf.summary.scalar(key, float(value), step=int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
