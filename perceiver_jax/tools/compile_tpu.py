"""The real train and eval steps compiled for a TPU topology on a machine with no TPU (`libtpu` from PyPI).

`compile_for_topology(config, "v5e:8x8", per_chip_batch=16)` builds the `train.Trainer` of `config` on a
mesh of the topology's devices (through `jax.experimental.topologies`), lowers its steps with abstract
replicated state and a batch sharded over the mesh, compiles them with the TPU compiler and returns one
flat dict: per-chip memory (from XLA's memory analysis of the compiled program), whether it fits the
chip's HBM, compile times, and the step's matrix-product FLOPs with every repeat counted (from the traced
step, `flops.jaxpr_matmul_flops`: XLA's cost analysis counts a loop body once, and a TPU lowering has no
cost analysis without a TPU). The eval step is compiled at as many forward passes per device as the train
step (`eval_batch_size`: an AudioSet eval clip is 16 windows, so 1/16 of the train batch's clips).

A program that does not fit is not an error here: the TPU compiler's out-of-memory report is read for the
memory it needed, and the result says `fits: False` with one line of advice (`advice`).

The figures are the installed libtpu's (its version is the result's `libtpu`): `main` refuses a libtpu other
than the one the installed jax's `tpu` extra pins, the compiler a TPU VM runs (`LibtpuError`), unless told
otherwise: another libtpu's compiler needs other memory (the paper's step at 16 per v5e chip: 7.62 GB with
libtpu 0.0.52, 9.99 GB with 0.0.42.1, the one jax 0.10.2 runs).
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from perceiver_jax.data import spec
from perceiver_jax.tools import benchmark, flops
from perceiver_jax.training import parallel, toolchain, train

GB = 1e9
# HBM per chip in GB (10^9 bytes) by `device_kind`, from the chips' published figures.
HBM_GB_PER_CHIP = {
  "TPU v2": 16 * 2**30 / GB,
  "TPU v3": 32 * 2**30 / GB,
  "TPU v4": 32 * 2**30 / GB,
  "TPU v4 lite": 8 * 2**30 / GB,
  "TPU v5 lite": 16 * 2**30 / GB,
  "TPU v5": 95 * 2**30 / GB,
  "TPU v5p": 95 * 2**30 / GB,
  "TPU v6 lite": 32 * 2**30 / GB,
}
# The TPU compiler's out-of-memory report (libtpu 0.0.42.1, as 0.0.52): "... the total memory required for
# HLO temporaries (31.18G) exceeds available HBM (15.75G)"; older ones: "Used 35.70G of 15.75G hbm".
_OOM = (
  re.compile(
    r"required for HLO temporaries \(([0-9.]+)([KMGT]?)\) exceeds available HBM \(([0-9.]+)([KMGT]?)\)"
  ),
  re.compile(r"Used\s+([0-9.]+)([KMGT]?)\s+of\s+([0-9.]+)([KMGT]?)\s+hbm", re.IGNORECASE),
)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class TopologyError(ValueError):
  """A topology name libtpu does not know, or a batch that does not split over its devices."""


class LibtpuError(ValueError):
  """The installed libtpu is not the one the installed jax pins (figures of a compiler no TPU VM runs)."""


def check_libtpu(allow_other: bool = False) -> None:
  """Raises `LibtpuError` (one line) unless libtpu is the installed jax's pinned one, or `allow_other`."""
  mismatch = toolchain.libtpu_mismatch()
  if mismatch and not allow_other:
    raise LibtpuError(
      f"{mismatch}: its compiler's figures would not be the pod's. pip install "
      f"'libtpu{toolchain.required_libtpu()}', or pass --allow_other_libtpu to compile with this one anyway."
    )


def _allow_other_libtpu_processes() -> None:
  # libtpu takes a machine-wide lock file when it starts; a compile-only client needs no exclusive access
  # to a TPU (there is none), and tests or tools may run side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def topology_devices(name: str) -> list:
  """The devices of TPU topology `name` ('v5e:2x2', 'v4:4x4x4', 'v5p:8x8x8', ...), no TPU needed."""
  _allow_other_libtpu_processes()
  from jax.experimental import topologies

  # v4 and v5p chips hold two TensorCores that JAX drives as one device ("megacore"), as on a TPU VM; libtpu's
  # topology otherwise describes one device per core, which JAX's meshes refuse for these chips.
  megacore = {"chip_config_name": "megacore"} if name.split(":")[0] in ("v4", "v5p") else {}
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **megacore).devices)
  except Exception as e:  # libtpu missing, or a name it does not know.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise TopologyError(
      f"Cannot build TPU topology {name!r} ({first[:200]}); give e.g. 'v5e:2x2', 'v4:2x2x1' or "
      "'v5p:4x4x4', with libtpu installed (pip install -e '.[tpu]')."
    ) from None


def num_chips(name: str) -> int:
  """Chips of a topology name: the product of its 'AxBxC' dimensions."""
  dims = name.split(":")[-1]
  try:
    return math.prod(int(d) for d in dims.split("x"))
  except ValueError:
    raise TopologyError(f"Topology {name!r} has no chip grid 'AxB' or 'AxBxC' after the ':'.") from None


def eval_batch_size(config: ml_collections.ConfigDict, global_batch: int, devices: int) -> int:
  """The eval batch compiled beside a train batch of `global_batch`: as many forward passes per device.

  An eval example of W windows (`dataset.eval_windows`, e.g. AudioSet's 16) is W forward passes, so the eval
  batch is global_batch / W examples, rounded down to a multiple of the devices, at least one per device.
  """
  windows = spec.eval_windows(config) or 1
  return max(devices, global_batch // windows // devices * devices)


def step_config(
  config: ml_collections.ConfigDict, global_batch: int, devices: int = 1
) -> ml_collections.ConfigDict:
  """`config` with train batch `global_batch` and the eval batch of `eval_batch_size` (a copy)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.global_batch_size = global_batch
  config.train.eval_batch_size = eval_batch_size(config, global_batch, devices)
  return config


def abstract_inputs(trainer: train.Trainer, global_batch: int):
  """(state, train batch, eval batch, batch index) as `jax.ShapeDtypeStruct`s laid out on the mesh."""
  config, mesh = trainer.config, trainer.mesh
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  shapes = jax.eval_shape(functools.partial(train.init_state, config, trainer.model, trainer.optimizer))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)

  def laid_out(split: str):  # The batch spec's (masks and the label's form included), split over the mesh.
    size = global_batch if split == "train" else config.train.eval_batch_size
    batch = spec.batch_spec(config, size, split)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard), batch)

  index = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
  return state, laid_out("train"), laid_out("eval"), index


def _oom_gb(message: str) -> tuple[float, float] | None:
  """(needed, capacity) in GB from the TPU compiler's out-of-memory report, or None."""
  match = next((m for m in (p.search(message) for p in _OOM) if m), None)
  if match is None:
    return None
  used, used_unit, cap, cap_unit = match.groups()
  return float(used) * _UNITS[used_unit.upper()] / GB, float(cap) * _UNITS[cap_unit.upper()] / GB


def _compile(lowered) -> tuple[Any, float, str | None]:
  """(compiled or None, seconds, out-of-memory message or None)."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # XlaRuntimeError; only an out-of-memory report is an expected outcome.
    if _oom_gb(str(e)) is None and "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return None, time.perf_counter() - start, str(e)
  return compiled, time.perf_counter() - start, None


def _argument_bytes(state, batch, num_devices: int) -> int:
  """Bytes one device holds of the replicated state and its shard of the batch."""
  size = lambda x: math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
  return (
    sum(size(x) for x in jax.tree.leaves(state)) + sum(size(x) for x in jax.tree.leaves(batch)) // num_devices
  )


def _memory(compiled, devices_per_chip: int) -> dict[str, float]:
  """Per-chip memory of a compiled program in GB (the per-device figures times devices per chip)."""
  m = compiled.memory_analysis()
  scale = devices_per_chip / GB
  arguments, outputs = m.argument_size_in_bytes * scale, m.output_size_in_bytes * scale
  aliased, temporaries = m.alias_size_in_bytes * scale, m.temp_size_in_bytes * scale
  code = m.generated_code_size_in_bytes * scale
  return {
    "arguments_gb": arguments,
    "outputs_gb": outputs,
    "aliased_gb": aliased,
    "temporaries_gb": temporaries,
    "code_gb": code,
    # Donated (aliased) outputs reuse their arguments' buffers.
    "total_gb": arguments + outputs - aliased + temporaries + code,
  }


def _cost(compiled) -> dict[str, float | None]:
  """XLA's cost estimate of one device's program: a loop's body counted once, whatever its trip count."""
  cost = compiled.cost_analysis() or {}
  return {
    "xla_gflops": cost["flops"] / 1e9 if "flops" in cost else None,
    "xla_gb_accessed": cost["bytes accessed"] / GB if "bytes accessed" in cost else None,
    "xla_optimal_s": cost.get("optimal_seconds"),
  }


def compile_for_topology(
  config: ml_collections.ConfigDict,
  topology: str,
  per_chip_batch: int,
  *,
  eval_step: bool = True,
  count_flops: bool = True,
  keep_compiled: bool = False,
  kernels: str = "tpu",
) -> dict[str, Any]:
  """Compiles `config`'s train step (and eval step) for `topology` at `per_chip_batch`; see the module doc.

  `kernels`: the platform whose kernels the model is traced with (`attention_kernels.kernels_for`): the
  TPU's own plain path, or 'cpu' to compile the hand-written CPU kernels for the TPU and compare them.
  Returns the flat dict of `scripts/compile_tpu.py`'s JSON line; with `keep_compiled`, also the compiled
  train step under '_compiled' (None when it did not fit).
  """
  devices = topology_devices(topology)
  chips = num_chips(topology)
  if len(devices) % chips:
    raise TopologyError(f"Topology {topology!r}: {len(devices)} devices do not split over {chips} chips.")
  per_chip_devices = len(devices) // chips
  if per_chip_batch <= 0 or per_chip_batch % per_chip_devices:
    raise TopologyError(
      f"--per_chip_batch={per_chip_batch} must be a positive multiple of the {per_chip_devices} devices "
      f"per {devices[0].device_kind} chip."
    )
  kind = devices[0].device_kind
  hbm = HBM_GB_PER_CHIP.get(kind)
  global_batch = per_chip_batch * chips
  trainer = train.Trainer(
    step_config(config, global_batch, len(devices)),
    mesh=parallel.make_mesh(devices),
    total_steps=1000,
    platform=kernels,
  )
  state, batch, eval_batch, index = abstract_inputs(trainer, global_batch)

  start = time.perf_counter()
  lowered = trainer.train_step.lower(state, batch)
  lower_s = time.perf_counter() - start
  compiled, compile_s, oom = _compile(lowered)
  result: dict[str, Any] = {
    "config": config.model_name,
    "topology": topology,
    "chip": kind,
    "chips": chips,
    "devices_per_chip": per_chip_devices,
    "hosts": len({d.process_index for d in devices}),
    "per_chip_batch": per_chip_batch,
    "global_batch": global_batch,
    "precision": trainer.config.precision,
    "remat": bool("remat" in trainer.config.model and trainer.config.model.remat),
    "kernels": kernels,
    "libtpu": toolchain.installed_libtpu(),  # The compiler's version: its figures are its own.
    "lower_s": lower_s,
    "compile_s": compile_s,
    "hbm_gb": hbm,
  }
  if compiled is not None:
    result.update(_memory(compiled, per_chip_devices))
    result.update(_cost(compiled))
    capacity = hbm
  else:
    # The report gives the temporaries; the arguments (state and batch shard) are known from their shapes.
    temporaries, capacity = (x * per_chip_devices for x in (_oom_gb(oom) or (math.nan, math.nan)))
    arguments = per_chip_devices * _argument_bytes(state, batch, len(devices)) / GB
    result.update(
      {
        k: None
        for k in ("outputs_gb", "aliased_gb", "code_gb", "xla_gflops", "xla_gb_accessed", "xla_optimal_s")
      },
      arguments_gb=arguments,
      temporaries_gb=temporaries,
      total_gb=arguments + temporaries,
    )
  result["usable_hbm_gb"] = capacity
  result["fits"] = compiled is not None and (hbm is None or result["total_gb"] <= hbm)
  if eval_step:
    start = time.perf_counter()
    eval_compiled, eval_s, eval_oom = _compile(trainer.eval_step.lower(state, eval_batch, index))
    result["eval_compile_s"] = time.perf_counter() - start
    result["eval_total_gb"] = (
      _memory(eval_compiled, per_chip_devices)["total_gb"]
      if eval_compiled is not None
      else (_oom_gb(eval_oom) or (math.nan,))[0] * per_chip_devices + result["arguments_gb"]
    )
    result["fits"] = result["fits"] and eval_compiled is not None
  if count_flops:
    # Traced, not compiled: the matrix products of the per-device program, a scan's body once per
    # iteration (XLA's cost analysis of the compiled program counts a loop body once).
    per_device = flops.jaxpr_matmul_flops(trainer.train_step, state, batch)
    result["step_tflops"] = per_device * len(devices) / 1e12
    result["model_gflops_per_image"] = 3 * benchmark.model_forward_flops(trainer.config) / 1e9
  result["advice"] = None if result["fits"] else advice(result, trainer.config)
  if keep_compiled:
    result["_compiled"] = compiled
  return result


def advice(result: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """One line: how much memory the case needs per chip and what to change."""
  needed, hbm = result["total_gb"], result["hbm_gb"] or result["usable_hbm_gb"]
  changes = []
  if "remat" in config.model and not config.model.remat:
    changes.append("set --config.model.remat=True (recompute blocks in the backward pass)")
  fits_batch = result.get("max_per_chip_batch")
  if fits_batch:
    changes.append(f"use --per_chip_batch={fits_batch} or less")
  elif needed and hbm and needed == needed:
    guess = max(result["devices_per_chip"], int(result["per_chip_batch"] * hbm / needed))
    changes.append(f"lower --per_chip_batch (about {guess} fits if memory scales with the batch)")
  if "cross_attention_chunk_size" in config.model and not config.model.cross_attention_chunk_size:
    changes.append("set --config.model.cross_attention_chunk_size=4096 (cross-attention memory O(N x chunk))")
  return (
    f"Does not fit: {result['topology']} needs {needed:.2f} GB per {result['chip']} chip of {hbm:.2f} GB "
    f"HBM at per-chip batch {result['per_chip_batch']}; " + "; or ".join(changes) + "."
  )


def search_max_batch(
  measure: Callable[[int], tuple[bool, float]],
  known: dict[int, tuple[bool, float]],
  hbm_gb: float,
  step: int = 1,
  tolerance: float = 0.05,
  max_compiles: int = 12,
) -> tuple[int, int | None, dict[int, tuple[bool, float]]]:
  """The largest batch (a multiple of `step`) that fits, bracketed to within `tolerance`.

  `measure(batch)` compiles and returns (fits, GB per chip); `known` holds batches already compiled.
  Memory is close to linear in the batch away from the limit, so each next batch is where a line crosses
  `hbm_gb`: while everything fits, the line through the two largest batches (and at least `tolerance`
  further, at most 8 times further); then the line between the largest batch that fits and the smallest
  that does not (regula falsi, Illinois variant: an end kept twice has its distance from `hbm_gb` halved,
  so a cliff in memory does not stall it). Near the limit the TPU compiler may rematerialise to fit, and
  memory goes flat: the lines then say little. Where the slope between the two largest batches that fit
  is under a quarter of the slope from the smallest one, the search doubles the batch instead (while
  everything fits) or halves the bracket in log batch (sqrt(lo * hi)). It ends when a batch at most
  `tolerance` (or one step) above the largest that fits has been compiled and does not fit, or after
  `max_compiles` compiles in all. Returns (the largest batch that fits or 0, the smallest that does not
  or None, every compile as {batch: (fits, GB)}).
  """
  points = dict(known)
  weight = {True: 1.0, False: 1.0}  # Illinois weights of the fitting and the failing end.
  last = None  # Whether the last compile inside the bracket fitted.

  def up(batch: int) -> int:
    return max(batch + step, math.ceil(batch * (1 + tolerance) / step) * step)

  def slope(b1: int, b2: int) -> float:
    return (points[b2][1] - points[b1][1]) / (b2 - b1)

  while True:
    fitting = sorted(b for b, (fits, _) in points.items() if fits)
    lo = fitting[-1] if fitting else 0
    hi = min((b for b, (fits, _) in points.items() if not fits), default=None)
    if (hi is not None and hi <= up(lo)) or len(points) >= max_compiles:
      return lo, hi, points
    bracketed = hi is not None and lo > 0
    if bracketed:
      pair = [lo, hi]
    else:  # Everything fits (or nothing does) so far: the two largest (or smallest) batches.
      pair = sorted(points)[-2:] if hi is None else sorted(points)[:2]
    b1, b2 = pair[0], pair[-1]
    e1, e2 = points[b1][1] - hbm_gb, points[b2][1] - hbm_gb
    if bracketed:
      e1, e2 = e1 * weight[True], e2 * weight[False]
    if len(fitting) > 2 and slope(*fitting[-2:]) < slope(fitting[0], lo) / 4:  # Flat: double, or bisect.
      guess = 2 * lo if hi is None else math.isqrt(lo * hi)
    elif b2 > b1 and e2 > e1:
      guess = int(b1 - e1 * (b2 - b1) / (e2 - e1))
    else:  # One compile, or memory that does not grow: double, or bisect.
      guess = 2 * lo if hi is None else (lo + hi) // 2
    if hi is None:  # up(lo) is a multiple of `step`.
      guess = min(max(guess, up(lo)), 8 * up(lo)) // step * step
    else:
      guess = min(max(guess // step * step, lo + step), hi - step)
    fits, _ = points[guess] = measure(guess)
    if bracketed:
      if fits == last:
        weight[not fits] /= 2
      weight[fits], last = 1.0, fits


def find_max_batch(config: ml_collections.ConfigDict, topology: str, first: dict[str, Any]) -> dict[str, Any]:
  """The largest per-chip batch that fits, from `first` (a compile at some batch) and a few more.

  `search_max_batch` over train-step compiles for the topology: the batch found fits, and one at most 5%
  (or one chip's devices) larger was compiled and does not fit, unless twelve compiles did not settle it.
  Returns {'max_per_chip_batch', 'max_batch_total_gb' (its memory per chip), 'max_batch_no_fit' (the
  smallest per-chip batch compiled that does not fit, or None), 'max_batch_compiles'}.
  """
  run = functools.partial(
    compile_for_topology, config, topology, eval_step=False, count_flops=False, kernels=first["kernels"]
  )

  def measure(batch: int) -> tuple[bool, float]:
    result = run(batch)
    return result["fits"], result["total_gb"]

  best, no_fit, points = search_max_batch(
    measure,
    {first["per_chip_batch"]: (first["fits"], first["total_gb"])},
    first["hbm_gb"] or first["usable_hbm_gb"],
    step=first["devices_per_chip"],
  )
  return {
    "max_per_chip_batch": best,
    "max_batch_total_gb": points[best][1] if best else None,
    "max_batch_no_fit": no_fit,
    "max_batch_compiles": len(points),
  }


def main(
  config: ml_collections.ConfigDict,
  topology: str,
  per_chip_batch: int,
  max_batch: bool,
  kernels: str = "tpu",
  allow_other_libtpu: bool = False,
) -> dict:
  """Prints the JSON line of `scripts/compile_tpu.py` (and, when it does not fit, the advice on stderr).

  Raises `LibtpuError` before compiling when libtpu is not the installed jax's (`check_libtpu`).
  """
  import json
  import sys

  check_libtpu(allow_other_libtpu)
  result = compile_for_topology(config, topology, per_chip_batch, kernels=kernels)
  if max_batch:
    result.update(find_max_batch(config, topology, result))
    if not result["fits"]:
      result["advice"] = advice(result, step_config(config, per_chip_batch))
  print(json.dumps(result, sort_keys=True), flush=True)
  if not result["fits"]:
    print(result["advice"], file=sys.stderr, flush=True)
  return result
