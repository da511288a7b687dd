"""Run artefacts: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; on every other process the writer does nothing.
"""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and to TensorBoard event files in `workdir/tensorboard`."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active and tensorboard:
      import tensorflow as tf  # Imported here: only the writing process pays for it.

      tf.config.set_visible_devices([], "GPU")
      self._tf = tf
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
    if self._tb is not None:
      with self._tb.as_default():
        for key, value in scalars.items():
          self._tf.summary.scalar(key, float(value), step=int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
