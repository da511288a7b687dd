"""Multi-process start-up: one `initialize` call before any JAX work, the same on every process.

Every process of a multi-host run executes the same program; `jax.distributed` lets them find each other
(through a coordinator, process 0) so that one mesh spans the devices of all of them. How the processes
learn the coordinator, their count and their id:
- explicitly (`coordinator_address`, `num_processes`, `process_id`; e.g. two CPU processes on one machine),
- or from the cluster: SLURM inside `srun` with several tasks, Cloud TPU pods and Open MPI's `mpirun`,
  where `jax.distributed.initialize()` fills in everything itself.
A plain single-process run (no flags, no cluster) does not initialize anything.

Start-up fails fast: a process whose peers do not all join within `initialization_timeout` seconds exits
with one line saying which processes it is missing and what to check, and `check_same_config` stops every
process at once when their configs differ, naming the differing fields. Two processes given one
`--process_id=0` are told apart before JAX's coordination service aborts on them (`_check_port_free`).

A run that loses a process mid-way (killed, crashed, its host gone) ends on every survivor in one line
naming the lost process (`naming_lost_processes`), not in JAX's C++ abort when the coordination service
gives up on the lost process's heartbeats. Where JAX aborts before Python can answer (the coordinator
gone, a process id given twice), `stderr_guard` turns the abort's report into one line.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import importlib.util
import json
import os
import re
import socket
import sys
import threading

import jax
from absl import logging

from perceiver_jax.training import stderr_guard

_initialized = False
# Seconds processes wait for each other in `initialize` unless told otherwise.
DEFAULT_INITIALIZATION_TIMEOUT = 300
# jax.distributed gets this much longer, so that the one-line error below comes before its abort.
_JAX_GRACE_S = 30
_CONFIG_KEY = "perceiver_jax/config"
# Seconds the survivors of a lost process wait for each other before naming the absent ones: well under
# the coordination service's heartbeat timeout (jax.distributed's 100 s), after which it aborts them all.
LOST_PROCESS_WAIT_S = 15
_LOST_KEY = "perceiver_jax/lost"
# Words of the errors a collective or a coordination-service call raises when another process is gone.
_LOST_PEER_SIGNS = ("gloo", "closed by peer", "reset by peer", "heartbeat", "coordination service", "barrier")


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
  initialization_timeout: int | None = None,
) -> bool:
  """Starts `jax.distributed` when the run has several processes; call before any other JAX work.

  Args:
    coordinator_address: 'host:port' of process 0, which serves the coordination service; with it,
      `num_processes` and `process_id` must be given too (unless the cluster sets them).
    num_processes: number of processes of the run.
    process_id: this process's index, 0 .. num_processes - 1.
    local_device_count: CPU devices this process presents (fake devices for tests and CPU clusters);
      GPU and TPU processes use the accelerators they can see.
    initialization_timeout: seconds to wait for all processes to join (default
      `DEFAULT_INITIALIZATION_TIMEOUT`); then this process exits with status 1 and one line naming the
      processes that did not join.

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
  timeout = DEFAULT_INITIALIZATION_TIMEOUT if initialization_timeout is None else int(initialization_timeout)
  if timeout <= 0:
    sys.exit(f"error: --initialization_timeout={timeout} must be a positive number of seconds.")
  if explicit and process_id == 0 and coordinator_address:
    _check_port_free(coordinator_address)
  watchdog = threading.Timer(
    timeout, _give_up, (coordinator_address, num_processes, process_id, timeout, cluster or "explicit")
  )
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=timeout + _JAX_GRACE_S,
    )
  except (ValueError, TypeError) as e:  # Inconsistent flags: say so in one line.
    sys.exit(f"error: jax.distributed cannot start: {e}")
  finally:
    watchdog.cancel()
  _initialized = True
  if not any(a in ("--verbose", "-verbose") for a in sys.argv):  # JAX's C++ abort as one line.
    state = jax._src.distributed.global_state  # noqa: SLF001  The values the cluster resolved.
    stderr_guard.start(jax.process_index(), jax.process_count(), state.coordinator_address)
  logging.info(
    "Process %d of %d: %d local devices of %d.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def single_process_backend() -> bool:
  """Starts JAX's backend (loading libtpu where installed); whether this run has a single process."""
  jax.devices()
  return jax.process_count() == 1


def _reachable(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
      return True
  except (OSError, ValueError):
    return False


def _check_port_free(address: str) -> None:
  """Exits in one line when `address`'s port is taken here: two processes given `--process_id=0`.

  Process 0 serves the coordination service on every address of its host at that port. gRPC binds it
  with SO_REUSEPORT, so a second process 0 on the host binds it too, registers as task 0, and JAX aborts
  the first one in C++ ("a request from a newer incarnation"); the second then waits for process 1 in vain.
  A plain bind (SO_REUSEADDR, which a socket left in TIME_WAIT allows) fails when anything listens there.
  """
  _, _, port = address.rpartition(":")
  try:
    port = int(port)
  except ValueError:
    return  # jax.distributed says what is wrong with the address.
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("0.0.0.0", port))
    except OSError as e:
      if e.errno != errno.EADDRINUSE:  # No IPv4 here, a port out of range...: jax.distributed decides.
        return
      sys.exit(
        f"error: this process was given --process_id=0, but port {port} of --coordinator_address={address} "
        f"is already in use on this host ({e.strerror}): another process was most likely started with "
        "--process_id=0 too. Give every process its own --process_id (0 on the coordinator's host, then 1 "
        "... --num_processes - 1), or, if another program holds the port, a free port in "
        "--coordinator_address on every process."
      )


def _give_up(address, num_processes, process_id, timeout, how) -> None:
  """Ends a process whose peers did not all join in time, with one line (jax.distributed would abort)."""
  state = jax._src.distributed.global_state  # noqa: SLF001  The values the cluster resolved, if any.
  address = address or state.coordinator_address or "the coordinator"
  count = num_processes or state.num_processes
  me = process_id if process_id is not None else state.process_id
  if me == 0 and count:
    others = "process 1" if count == 2 else f"some of processes 1..{count - 1}"
    missing = f"{others} did not connect to this process (0, the coordinator at {address})"
  elif address != "the coordinator" and not _reachable(address):
    missing = f"process 0 (the coordinator) does not answer at {address}"
  else:
    missing = f"process 0 (the coordinator at {address}) answers, but not all {count or 'N'} processes joined"
  sys.stderr.write(
    f"error: jax.distributed did not start within {timeout} s ({how} start-up, this is process {me} of "
    f"{count or '?'}): {missing}. Check that all {count or 'N'} processes were started, with the same "
    "--num_processes, distinct --process_id values and a --coordinator_address (host:port of process 0) "
    "that every host can reach (firewall, port in use); raise --initialization_timeout if they start "
    "slowly.\n"
  )
  sys.stderr.flush()
  stderr_guard.drain()
  os._exit(1)


def _flat(tree, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix: tree}
  return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}.{key}".lstrip(".")).items()}


def check_same_config(config, timeout_s: int = 300, flags: dict | None = None) -> None:
  """Stops every process at once (exit status 1) when the processes' resolved configs or `flags` differ.

  Each process publishes its config in the coordination service's key-value store, and every process
  compares all of them with process 0's, so all reach the same verdict and the message names the fields.
  `flags` ({'--workdir': ..., ...}) are the other values the processes of one run must share: with
  different workdirs each would wait for the others at the first save, silently, for orbax's 20 minutes.
  A single-process run has nothing to compare.
  """
  if jax.process_count() == 1:
    return
  client = jax._src.distributed.global_state.client  # noqa: SLF001  The coordination service's client.
  tree = json.loads(config.to_json_best_effort()) if config is not None else {}
  text = json.dumps({**tree, **(flags or {})}, sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()
  me, count = jax.process_index(), jax.process_count()
  client.key_value_set(f"{_CONFIG_KEY}/hash/{me}", digest)
  client.key_value_set(f"{_CONFIG_KEY}/json/{me}", text)
  hashes = [client.blocking_key_value_get(f"{_CONFIG_KEY}/hash/{i}", timeout_s * 1000) for i in range(count)]
  differing = [i for i in range(count) if hashes[i] != hashes[0]]
  if not differing:
    logging.info("All %d processes run the same config (sha256 %s).", count, digest[:16])
    return
  reference = _flat(json.loads(client.blocking_key_value_get(f"{_CONFIG_KEY}/json/0", timeout_s * 1000)))
  other = differing[0]
  theirs = _flat(json.loads(client.blocking_key_value_get(f"{_CONFIG_KEY}/json/{other}", timeout_s * 1000)))
  fields = sorted(k for k in reference.keys() | theirs.keys() if reference.get(k) != theirs.get(k))
  shown = ", ".join(f"{k} ({reference.get(k)!r} vs {theirs.get(k)!r})" for k in fields[:8])
  # Everyone has read what it needs before anyone leaves (process 0 holds the store).
  client.wait_at_barrier(f"{_CONFIG_KEY}/verdict", timeout_s * 1000)
  sys.exit(
    f"error: the processes were started with different configs: process {other}"
    f"{f' (and {len(differing) - 1} more)' if len(differing) > 1 else ''} differs from process 0 in "
    f"{shown}{', ...' if len(fields) > 8 else ''}. Start every process with the same flags."
  )


def lost_process_error(error: BaseException | None) -> bool:
  """Whether `error`, in a multi-process run, may mean that another process is gone (see below)."""
  if error is None or not _initialized or jax.process_count() < 2:
    return False
  text = str(error).lower()
  return any(w in text for w in _LOST_PEER_SIGNS)


def _lost_processes(wait_s: float) -> tuple[list[int], bool] | None:
  """([lost process ids], whether the coordinator is lost), or None when every process answers.

  Every survivor of a lost process meets the others at one barrier of the coordination service; the
  service names the processes that did not come within `wait_s` ("Some timed out task names").
  A coordinator that is gone fails the barrier at once: its service held it.
  """
  client = jax._src.distributed.global_state.client  # noqa: SLF001  The coordination service's client.
  try:
    client.wait_at_barrier(_LOST_KEY, int(wait_s * 1000))
  except Exception as e:  # noqa: BLE001  The barrier's failure is the answer.
    text = str(e)
    missed = stderr_guard.missed_heartbeats(text)
    if missed:
      return missed, False
    if "UNAVAILABLE" in text or "Failed to send RPC" in text:
      return [0], True
    named = re.search(r"timed out task names:\s*((?:\d+\s*)+)", text)
    return (sorted(int(i) for i in named.group(1).split()) if named else []), False
  return None


@contextlib.contextmanager
def naming_lost_processes(wait_s: float = LOST_PROCESS_WAIT_S):
  """Ends this process in one line naming the lost process(es) when the body fails because one is gone.

  When a process of a multi-process run dies (SIGKILL, out of memory, a host down), the others fail in
  their next collective (gloo: "Connection closed by peer") or coordination-service call. Left alone they
  would then wait at jax.distributed's shutdown until the service misses the lost process's heartbeats
  (100 s) and abort in C++ with a stack trace, never saying which process is gone. Here the survivors
  meet at a barrier of the service instead (at most `wait_s` seconds), which names the absent ones; each
  survivor prints one line and exits with status 1 at once (skipping the shutdown barrier that would
  abort). An error that is not a lost process, or one that every process reaches, goes on as it was.
  """
  try:
    yield
  except Exception as e:
    if not lost_process_error(e):
      raise
    me, count = jax.process_index(), jax.process_count()
    logging.warning(
      "A call across processes failed (%s); asking which process is gone.",
      str(e)[:300],
      exc_info="--verbose" in sys.argv,  # The traceback, where the entry point was asked for it.
    )
    missed = stderr_guard.missed_heartbeats(str(e))  # The service has told already (and aborts us soon).
    lost = (missed, False) if missed else _lost_processes(wait_s)
    if lost is None:
      raise
    ids, coordinator = lost
    state = jax._src.distributed.global_state  # noqa: SLF001
    if coordinator:
      who = f"process 0 (the coordinator at {state.coordinator_address}) is gone: it no longer answers"
    elif ids:
      names = ", ".join(map(str, ids))
      who = f"process{'es' if len(ids) > 1 else ''} {names} of {count} {'are' if len(ids) > 1 else 'is'} gone"
      how = (
        "stopped sending heartbeats to the coordinator" if missed else f"did not answer within {wait_s:g} s"
      )
      who += f": {'they' if len(ids) > 1 else 'it'} {how}"
    else:
      who = f"a process of {count} is gone: not all answered within {wait_s:g} s"
    first = " ".join(str(e).split())[:120]
    sys.stderr.write(
      f"error: {who} ({stderr_guard.HOW_LOST}), seen by process {me} as: {first}. This process stops too. "
      f"{stderr_guard.start_again(count)}.\n"
    )
    sys.stderr.flush()
    stderr_guard.drain()
    os._exit(1)
