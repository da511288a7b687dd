"""Train-step throughput of a config: the real step (forward, backward, optimizer) on synthetic data.

`run(config)` builds `train.Trainer` on all local devices, feeds one synthetic batch of the config's
shape, and returns speed and cost figures: examples/s and the median step time after warm-up, compile
time, the model's FLOPs in the paper's convention (3 x the analytic forward matmul FLOPs), XLA's own
count of the step, and model-FLOPs utilisation against a large matmul measured in the same run and dtype,
timed after every step (the machine's practical ceiling, not its datasheet peak). `main` first gives a
CPU run one XLA device per core (`set_cpu_devices`).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_jax.data import synthetic
from perceiver_jax.tools import flops
from perceiver_jax.training import parallel, train

# Backward is about twice the forward's matmuls: the usual convention for model FLOPs of a train step.
TRAIN_FLOPS_PER_FORWARD = 3

# Every field of the result; peak_device_mb is None on a CPU.
FIELDS = (
  "config_arg",
  "platform",
  "devices",
  "cpu_count",
  "precision",
  "batch",
  "examples_per_s",
  "step_s",
  "step_s_min",
  "compile_s",
  "model_gflops_per_image",
  "model_forward_gflops_per_image",
  "xla_gflops_per_step",
  "achieved_model_gflops",
  "matmul_ceiling_gflops",
  "mfu",
  "loss",
  "peak_host_mb",
  "xla_temp_mb",
  "peak_device_mb",
)


def _block(tree) -> None:
  jax.tree.map(lambda x: x.block_until_ready(), tree)


def matmul_probe(mesh, dtype, size: int):
  """A square matmul on every device of `mesh` at once: returns (run, flops); run() blocks until done."""
  x = jax.device_put(jnp.ones((mesh.size, size, size), dtype), parallel.batch_sharded(mesh))
  f = parallel.data_parallel(lambda a: a @ a, mesh, in_specs=parallel.SHARDED, out_specs=parallel.SHARDED)
  f = f.lower(x).compile()
  _block(f(x))
  return (lambda: _block(f(x))), 2.0 * mesh.size * size**3


def default_matmul_size(platform: str) -> int:
  """Large enough to reach the matmul library's best rate: 2048 on a CPU, 8192 on an accelerator."""
  return 2048 if platform == "cpu" else 8192


def global_batch_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
  per_device = config.benchmark.batch_per_device
  return per_device * num_devices if per_device else config.train.global_batch_size


def synthetic_batch(config: ml_collections.ConfigDict, batch: int) -> dict[str, np.ndarray]:
  """The first train batch of `batch` examples of the synthetic source (data.synthetic): the batch spec's
  shapes, input masks and label form of `config`, so that a padded source is timed with its mask."""
  return synthetic.make_batch(config, "train", range(batch))


def model_forward_flops(config: ml_collections.ConfigDict) -> float:
  """Forward FLOPs per image in the paper's convention (analytic for the Perceiver)."""
  return flops.model_stats(config)["gflops"] * 1e9


def xla_step_flops(trainer: train.Trainer, train_state, batch) -> float:
  """XLA's FLOP count of one step, every repeat counted.

  cost_analysis counts a loop body once, so the count is taken on a lowering with the repeats unrolled.
  """
  config = trainer.config
  if config.model_name == "perceiver" and (config.model.scan_repeats or config.model.scan_blocks):
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.update(scan_repeats=False, scan_blocks=False)
    trainer = train.Trainer(config, mesh=trainer.mesh, total_steps=trainer.total_steps)
  cost = trainer.train_step.lower(train_state, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The count is of the per-device program.
  return float(cost.get("flops", float("nan"))) * trainer.mesh.size


def _peak_device_mb(devices) -> float | None:
  peaks = []
  for device in devices:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) / 2**20 if peaks else None


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Compiles and times `config`'s train step; returns the figures as a flat dict."""
  mesh = parallel.make_mesh(jax.local_devices())
  bench = config.benchmark
  batch_size = global_batch_size(config, mesh.size)
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.global_batch_size = config.train.eval_batch_size = batch_size
  steps = bench.warmup_steps + bench.steps
  trainer = train.Trainer(config, mesh=mesh, total_steps=steps)
  train_state = trainer.init()
  batch = parallel.shard_batch(mesh, synthetic_batch(config, batch_size))

  start = time.perf_counter()
  step = trainer.train_step.lower(train_state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = step.memory_analysis()

  # Every timed step is followed by the reference matmul, so the ceiling is measured in the same seconds as
  # the step it is compared with; on a shared machine whose speed drifts, the ratio is what holds still.
  dtype = jnp.bfloat16 if config.precision == "bfloat16" else jnp.float32
  platform = mesh.devices.flat[0].platform
  # An accelerator's ceiling is every chip at once. CPU devices share the machine's cores, and one device's
  # matmul already runs on all of them: the ceiling is one matmul on one device, however many there are
  # (several at once would measure the contention between them, not the machine).
  probe_mesh = parallel.make_mesh(mesh.devices.flat[:1]) if platform == "cpu" else mesh
  probe, probe_flops = matmul_probe(probe_mesh, dtype, bench.matmul_size or default_matmul_size(platform))
  for _ in range(bench.warmup_steps):
    train_state, metrics = step(train_state, batch)
  _block(metrics)
  times, probe_times = [], []
  for _ in range(bench.steps):
    start = time.perf_counter()
    train_state, metrics = step(train_state, batch)
    _block(metrics)
    times.append(time.perf_counter() - start)
    # The first matmul after a step runs 20-30% slow (the step's threads are still winding down): the
    # best of three is the ceiling, never one flattering this code.
    probes = []
    for _ in range(3):
      start = time.perf_counter()
      probe()
      probes.append(time.perf_counter() - start)
    probe_times.append(min(probes))
  loss = float(jax.device_get(metrics["loss"]))
  step_s = statistics.median(times)
  ceiling = probe_flops / statistics.median(probe_times) / 1e9

  forward = model_forward_flops(config)
  model_gflops = TRAIN_FLOPS_PER_FORWARD * forward / 1e9
  examples_per_s = batch_size / step_s
  result = {
    "config_arg": config.get("config_arg", ""),
    "platform": platform,
    "devices": mesh.size,
    "cpu_count": os.cpu_count(),
    "precision": config.precision,
    "batch": batch_size,
    "examples_per_s": examples_per_s,
    "step_s": step_s,
    "step_s_min": min(times),
    "compile_s": compile_s,
    "model_gflops_per_image": model_gflops,
    "model_forward_gflops_per_image": forward / 1e9,
    "xla_gflops_per_step": xla_step_flops(trainer, train_state, batch) / 1e9,
    "achieved_model_gflops": examples_per_s * model_gflops,
    "matmul_ceiling_gflops": ceiling,
    # Median over the steps of each step's achieved model FLOP/s over its own matmul's.
    "mfu": statistics.median(
      batch_size * model_gflops / t / (probe_flops / 1e9 / p) for t, p in zip(times, probe_times, strict=True)
    ),
    "loss": loss,
    "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "xla_temp_mb": getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory else None,
    "peak_device_mb": _peak_device_mb(mesh.devices.flat) if platform != "cpu" else None,
  }
  return result


def default_cpu_devices(cores: int, batch: int | None) -> int:
  """One XLA CPU device per core, or (for a fixed global `batch`) the most devices <= cores dividing it."""
  if batch is None:
    return cores
  return max(n for n in range(1, cores + 1) if batch % n == 0)


def set_cpu_devices(config: ml_collections.ConfigDict) -> int | None:
  """Presents `benchmark.cpu_devices` XLA CPU devices (None: `default_cpu_devices`); call before any JAX work.

  Data parallel over one device per core lets two programs share the machine's thread pool, which keeps
  the cores busier through the step's many small operations (docs/performance.md: about 12% more
  images/s on the 2-core CPU than one device). An explicit --xla_force_host_platform_device_count, or
  a backend already started (tests), is left as it is. Returns the count set, or None.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return None
  count = config.benchmark.cpu_devices
  if count is None:
    per_device = config.benchmark.batch_per_device
    count = default_cpu_devices(os.cpu_count() or 1, None if per_device else config.train.global_batch_size)
  try:
    jax.config.update("jax_num_cpu_devices", int(count))
  except RuntimeError:  # JAX is running already: its devices stay as they are.
    return None
  return int(count)


def main(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs `config` and prints the result as one JSON line (scripts/benchmark.py)."""
  set_cpu_devices(config)
  result = run(config)
  print(json.dumps(result), flush=True)
  return result
