"""Multi-process start-up: one `initialize` call before any JAX work, the same on every process.

Every process of a multi-host run executes the same program; `jax.distributed` lets them find each other
(through a coordinator, process 0) so that one mesh spans the devices of all of them. How the processes
learn the coordinator, their count and their id:
- explicitly (`coordinator_address`, `num_processes`, `process_id`; e.g. two CPU processes on one machine),
- or from the cluster: SLURM inside `srun` with several tasks, Cloud TPU pods and Open MPI's `mpirun`,
  where `jax.distributed.initialize()` fills in everything itself.
A plain single-process run (no flags, no cluster) does not initialize anything.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
from absl import logging

_initialized = False


def _env_int(name: str) -> int:
  try:
    return int(os.environ.get(name, "0"))
  except ValueError:
    return 0


def detected_cluster() -> str | None:
  """'slurm', 'tpu' or 'ompi' when this process is one of several started by that cluster, else None."""
  # SLURM_STEP_NODELIST is set inside `srun` only: a batch script's own shell is not a process of the run.
  if "SLURM_JOB_ID" in os.environ and "SLURM_STEP_NODELIST" in os.environ and _env_int("SLURM_NTASKS") > 1:
    return "slurm"
  if _env_int("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  # Cloud TPU VMs: TPU chips and libtpu; JAX then asks the VM's metadata server for the pod's hosts
  # (a single-host TPU VM initializes as one process). GKE TPU pods name their hosts in the environment.
  tpu_chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
  if "TPU_WORKER_HOSTNAMES" in os.environ or (tpu_chips and importlib.util.find_spec("libtpu")):
    return "tpu"
  return None


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_count: int | None = None,
) -> bool:
  """Starts `jax.distributed` when the run has several processes; call before any other JAX work.

  Args:
    coordinator_address: 'host:port' of process 0, which serves the coordination service; with it,
      `num_processes` and `process_id` must be given too (unless the cluster sets them).
    num_processes: number of processes of the run.
    process_id: this process's index, 0 .. num_processes - 1.
    local_device_count: CPU devices this process presents (fake devices for tests and CPU clusters);
      GPU and TPU processes use the accelerators they can see.

  Returns:
    Whether `jax.distributed` was initialized (False for a plain single-process run).
  """
  global _initialized
  if _initialized:
    return True
  if local_device_count is not None:
    jax.config.update("jax_num_cpu_devices", int(local_device_count))
  explicit = coordinator_address is not None or num_processes is not None or process_id is not None
  cluster = None if explicit else detected_cluster()
  if not explicit and cluster is None:
    return False
  # Cross-process collectives on CPU (tests, CPU clusters); accelerators bring their own. Must precede
  # the CPU backend's creation, which `initialize` triggers.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info(
    "Initializing jax.distributed (%s): coordinator %s, process %s of %s.",
    cluster or "explicit",
    coordinator_address or "auto",
    "auto" if process_id is None else process_id,
    num_processes or "auto",
  )
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  _initialized = True
  logging.info(
    "Process %d of %d: %d local devices of %d.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
