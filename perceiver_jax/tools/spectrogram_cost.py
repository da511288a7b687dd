"""Where the log-mel spectrogram is cheapest for a pod: its cost on a host core against its cost on the chip.

A `mel` config (`input.front_end="mel"`) computes the spectrogram on the device, inside the train step
(front_ends/audio.py). The alternative is the host's input pipeline, with `tf.signal`. Both sides, for the
config's crop S, frame length W, hop and F bands:
- `host_clips_per_second`: log-mel spectrograms of [B, S] float32 clips per second on this process's CPU,
  through `tf.signal` (stft, the HTK mel matrix, log), TensorFlow held to `threads` threads: per host core
  with the default 1. `host_log_mel` is the same computation as the front end's (tested).
- `device_cost`: the front end's spectrogram alone, compiled for one chip of a TPU topology at the per-chip
  batch (no TPU needed: `jax.experimental.topologies`, as tools/compile_tpu.py): XLA's cost analysis of
  that program (FLOPs, bytes accessed; no loop in it, so nothing is counted once for many) and its memory.
  Set them against the train step's figures from scripts/compile_tpu.py (`step_tflops`, every repeat
  counted; `xla_gb_accessed`, a loop body counted once, so the spectrogram's share of the bytes is an upper
  bound).
- `host_need`: the clips a host must make per second to keep its chips busy, from the model's forward
  FLOPs (training: 3x forward per clip), as scripts/benchmark_input.py counts it.
"""

from __future__ import annotations

import time
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_jax.tools import benchmark, compile_tpu
from perceiver_jax.training import build, toolchain


def _mel_settings(config: ml_collections.ConfigDict) -> tuple[int, Any]:
  if config.input.front_end != "mel":
    raise ValueError(
      f"The spectrogram's cost needs a mel config; input.front_end={config.input.front_end!r}."
    )
  return int(build.input_spec(config).shape[0]), config.input


def host_log_mel(config: ml_collections.ConfigDict):
  """A tf.function: samples [B, S] float32 -> standardised log-mel [B, T, F], as the mel front end's."""
  import tensorflow as tf  # Imported here: only the host measurement pays for it.

  num_samples, i = _mel_settings(config)
  bank = tf.signal.linear_to_mel_weight_matrix(
    i.num_mel_bins, i.frame_length // 2 + 1, i.sample_rate, i.lower_hz, i.upper_hz or i.sample_rate / 2
  )  # [W/2 + 1, F]

  @tf.function(input_signature=[tf.TensorSpec([None, num_samples], tf.float32)])
  def log_mel(samples):
    # Periodic Hann window (tf.signal's default), as np.hanning(W + 1)[:-1] in the front end.
    stft = tf.signal.stft(samples, i.frame_length, i.frame_step, fft_length=i.frame_length)  # [B, T, W/2+1]
    mel = tf.tensordot(tf.math.square(tf.abs(stft)), bank, 1)  # [B, T, F]
    return (tf.math.log(mel + 1e-6) - i.log_mel_mean) / i.log_mel_std

  return log_mel


def host_clips_per_second(
  config: ml_collections.ConfigDict, batch: int = 32, seconds: float = 5.0, threads: int = 1
) -> dict[str, float]:
  """Clips/s of `host_log_mel` on random clips, TensorFlow held to `threads` intra- and inter-op threads.

  Call before anything else in the process starts TensorFlow's runtime (the thread counts are fixed then).
  """
  import tensorflow as tf

  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  num_samples, _ = _mel_settings(config)
  log_mel = host_log_mel(config)
  clips = tf.constant(np.random.default_rng(0).standard_normal((batch, num_samples), np.float32) * 0.1)
  log_mel(clips).numpy()  # Traces and warms up.
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    log_mel(clips).numpy()
    count += batch
  elapsed = time.perf_counter() - start
  return {"host_clips_per_s": count / elapsed, "host_threads": threads, "host_batch": batch}


def device_cost(config: ml_collections.ConfigDict, topology: str, per_chip_batch: int) -> dict[str, Any]:
  """XLA's cost and memory of the front end's spectrogram of `per_chip_batch` clips, compiled for one chip."""
  num_samples, _ = _mel_settings(config)
  devices = compile_tpu.topology_devices(topology)
  spectrogram = hk.transform(lambda s: build.front_end(config).spectrogram(s)).apply
  fn = jax.jit(
    lambda s: spectrogram({}, None, s),
    in_shardings=jax.sharding.SingleDeviceSharding(devices[0]),
    out_shardings=jax.sharding.SingleDeviceSharding(devices[0]),
  )
  start = time.perf_counter()
  compiled = fn.lower(jax.ShapeDtypeStruct((per_chip_batch, num_samples), jnp.float32)).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis() or {}
  memory = compiled.memory_analysis()
  return {
    "topology": topology,
    "chip": devices[0].device_kind,
    "per_chip_batch": per_chip_batch,
    "spectrogram_gflops": cost["flops"] / 1e9 if "flops" in cost else None,
    "spectrogram_gb_accessed": cost["bytes accessed"] / 1e9 if "bytes accessed" in cost else None,
    "spectrogram_temporaries_gb": memory.temp_size_in_bytes / 1e9,
    "spectrogram_compile_s": compile_s,
    "libtpu": toolchain.installed_libtpu(),
  }


def host_need(
  config: ml_collections.ConfigDict, chips_per_host: int = 4, chip_tflops: float = 197.0, mfu: float = 0.4
) -> dict[str, float]:
  """Clips/s a host must supply: chips_per_host x mfu x chip_tflops / (3 x forward TFLOPs per clip)."""
  forward_tflops = benchmark.model_forward_flops(config) / 1e12
  per_chip = mfu * chip_tflops / (3 * forward_tflops)
  return {
    "train_gflops_per_clip": 3 * forward_tflops * 1e3,
    "host_need_clips_per_s": chips_per_host * per_chip,
    "chips_per_host": chips_per_host,
    "chip_tflops": chip_tflops,
    "mfu": mfu,
  }
