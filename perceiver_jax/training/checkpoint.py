"""Checkpoints of the train state, preemption, and loading a run back from its workdir.

A run's workdir holds `config.json` and `checkpoints/<step>/`, written by orbax: every process takes part
in a save, each step is written to a temporary directory that is renamed when complete (a crash mid-save
leaves the previous checkpoints whole), and only the newest `config.checkpoint.keep` are kept. A checkpoint
that cannot be read is skipped with a warning for the one before it; a training run moves it aside to
`corrupt_checkpoints/<step>/`, so that the step can be written again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging as std_logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, Sharding

from perceiver_jax.training import distributed, run_files

CHECKPOINTS = "checkpoints"
CORRUPT_CHECKPOINTS = "corrupt_checkpoints"


def _host(x) -> np.ndarray:
  """A global array's value on this process, whichever devices hold it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def state_checksum(tree: Any) -> str:
  """sha256 (hex) of every leaf of `tree`: its '/'-joined path, dtype, shape and little-endian bytes,
  the leaves in sorted path order. Equal checksums mean bitwise equal states."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  digest = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0], simple=True, separator="/")):
    value = _host(leaf)
    value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def params_checksum(params: Any) -> str:
  """sha256 (hex) of every parameter as little-endian float32 bytes, the parameters in sorted path order.

  The path of a parameter is its keys joined by '/': '<Haiku module name>/<parameter name>', such as
  'perceiver/classifier/w'. Equal checksums mean bitwise equal float32 parameters.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  by_path = {jax.tree_util.keystr(path, simple=True, separator="/"): value for path, value in leaves}
  if len(by_path) != len(leaves):
    raise ValueError("Two parameters share one '/'-joined path; the checksum would be ambiguous.")
  digest = hashlib.sha256()
  for path in sorted(by_path):
    digest.update(np.ascontiguousarray(_host(by_path[path]), dtype="<f4").tobytes())
  return digest.hexdigest()


@jax.jit
def _finite_leaves(tree):
  return jax.tree.map(
    lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True), tree
  )


def check_finite(train_state: Any, step: int) -> None:
  """Raises FloatingPointError naming the non-finite parts of `train_state` after `step`."""
  finite = jax.device_get(_finite_leaves(train_state))
  bad = [
    jax.tree_util.keystr(path, simple=True, separator="/")
    for path, ok in jax.tree_util.tree_flatten_with_path(finite)[0]
    if not ok
  ]
  if bad:
    raise FloatingPointError(
      f"Non-finite values in the train state after step {step} (in {', '.join(bad[:5])}"
      f"{', ...' if len(bad) > 5 else ''}); not saving it."
    )


def config_from_json(value: str | dict) -> ml_collections.ConfigDict:
  """A ConfigDict from `ConfigDict.to_json_best_effort()` output (a string or its parsed dict).

  JSON has no tuples: lists come back as tuples, as the config files write sequences. Placeholders
  (`config_dict.placeholder`) were written as null and come back as None, which accepts any later value.
  """
  tree = json.loads(value) if isinstance(value, str) else value

  def convert(x):
    if isinstance(x, dict):
      return {k: convert(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(convert(v) for v in x)
    return x

  return ml_collections.ConfigDict(convert(tree))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir`, from its config.json, or without one from its newest checkpoint."""
  path = epath.Path(workdir) / run_files.CONFIG
  tree = run_files.read_json(path) if path.exists() else saved_config(workdir)
  if tree is None and not path.exists():
    what = "does not exist" if not epath.Path(workdir).exists() else f"has no config.json ({path})"
    raise FileNotFoundError(f"No run in workdir {workdir!r}: it {what}; train into it first.")
  if not isinstance(tree, dict):
    raise run_files.RunFileError(f"{path} holds no config (a JSON {type(tree).__name__}); restore it.")
  tree.pop(run_files.CONFIG_CHANGES, None)
  for key, value in run_files.ADDED_FIELDS.items():  # Runs saved before a field was declared.
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.setdefault(leaf, value)
  return config_from_json(tree)


def directory(workdir: str) -> epath.Path:
  path = epath.Path(workdir) / CHECKPOINTS
  # orbax wants absolute paths; gs:// and other remote paths already are.
  return path if "://" in os.fspath(path) else path.resolve()


def make_manager(workdir: str, keep: int = 1, read_only: bool = False) -> ocp.CheckpointManager:
  """The orbax manager of `workdir/checkpoints`, keeping the newest `keep` checkpoints.

  Saves are asynchronous: the state is copied to host memory before `save` returns (so the next step
  may donate it) and written in the background while training goes on.
  """
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None if read_only else keep,
    save_interval_steps=0 if read_only else 1,
    create=not read_only,
    read_only=read_only,
    enable_async_checkpointing=not read_only,
    # Root metadata is written only by a saving manager, and its barrier would make every read-only
    # manager a collective: process 0 alone reads the checkpoints' config (check_resume).
    save_root_metadata=not read_only,
  )
  return ocp.CheckpointManager(directory(workdir), options=options)


# Keys of a checkpoint's step metadata (orbax's `custom_metadata`).
CHECKSUM, CONFIG, UNLOGGED = "state_sha256", "config", "unlogged_metrics"
# The marker of a checkpoints directory whose checkpoints record their checksum: {"since_step": s}, written
# by process 0 before the first save that records one. A checkpoint of step >= s whose step metadata
# (orbax's `<step>/_CHECKPOINT_METADATA`) is unreadable or holds no checksum is damaged; one of an earlier
# step, or of a directory without the marker, was saved before checksums were recorded (restored unchecked).
CHECKSUMS_SINCE = "checksums_since.json"
_STEP_METADATA = "_CHECKPOINT_METADATA"
_marked: set[str] = set()  # Checkpoints directories this process knows to hold the marker.


def _mark_checksums(manager: ocp.CheckpointManager, step: int) -> None:
  """Writes the `CHECKSUMS_SINCE` marker (process 0) before the first checksummed save of a directory."""
  key = os.fspath(manager.directory)
  if jax.process_index() != 0 or key in _marked:
    return
  path = manager.directory / CHECKSUMS_SINCE
  if not path.exists():
    manager.directory.mkdir(parents=True, exist_ok=True)
    run_files.write_json(path, {"since_step": int(step)})
  _marked.add(key)


def checksums_since(directory: epath.PathLike) -> int | None:
  """The first step whose checkpoint in `directory` records its checksum, or None (the marker is absent).

  A marker that cannot be read counts as step 0: every checkpoint must then show its checksum (a damaged
  marker must not make damaged checkpoints pass as old ones).
  """
  path = epath.Path(directory) / CHECKSUMS_SINCE
  if not path.exists():
    return None
  try:
    return int(json.loads(path.read_text())["since_step"])
  except Exception:  # noqa: BLE001  Unreadable: the strictest reading.
    logging.warning("The marker %s cannot be read: every checkpoint there must show its checksum.", path)
    return 0


def save(
  manager: ocp.CheckpointManager, step: int, train_state: Any, metadata: dict[str, Any] | None = None
) -> None:
  """Starts saving `train_state` as checkpoint `step`; a state with NaN or inf is never saved.

  The state's checksum (verified on restore) and `metadata` (JSON values) go into the step's metadata.
  """
  check_finite(train_state, step)
  custom = {**(metadata or {}), CHECKSUM: state_checksum(train_state)}
  _mark_checksums(manager, step)
  manager.save(step, args=ocp.args.StandardSave(train_state), force=True, custom_metadata=custom)


def step_metadata(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """What `save` recorded with checkpoint `step` ({} for a checkpoint saved without it, or unreadable)."""
  return _read_step_metadata(manager, step)[0]


def _read_step_metadata(manager: ocp.CheckpointManager, step: int) -> tuple[dict[str, Any], str | None]:
  """(what `save` recorded with checkpoint `step`, why its step metadata cannot be read or None)."""
  path = manager.directory / str(step) / _STEP_METADATA
  try:
    if not path.exists():
      return {}, f"{path} is missing"
    json.loads(path.read_text())  # orbax reads a damaged file as empty metadata, without an error.
    custom = manager.metadata(step).custom_metadata
  except Exception as e:  # noqa: BLE001  An unreadable metadata file: nothing recorded that can be used.
    return {}, f"{path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
  return (dict(custom), None) if isinstance(custom, dict) else ({}, f"{path} holds no metadata")


def saved_config(workdir: str) -> dict[str, Any] | None:
  """The config (config.json's contents) recorded with the newest checkpoint in `workdir` that has one."""
  if not directory(workdir).is_dir():
    return None
  manager = make_manager(workdir, read_only=True)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      config = step_metadata(manager, step).get(CONFIG)
      if isinstance(config, dict):
        logging.info("The run's config.json is missing: using the config saved with checkpoint %d.", step)
        return config
  finally:
    manager.close()
  return None


def abstract_state(init_fn: Callable[[], Any], sharding: Sharding) -> Any:
  """Shapes and dtypes of `init_fn()`'s output, laid out by `sharding`: a restore target."""
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), jax.eval_shape(init_fn)
  )


def all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (a collective: every process calls it)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _move_aside(manager: ocp.CheckpointManager, step: int) -> None:
  if jax.process_index() == 0:
    source = manager.directory / str(step)
    if source.exists():
      target_root = manager.directory.parent / CORRUPT_CHECKPOINTS
      target_root.mkdir(parents=True, exist_ok=True)
      target, suffix = target_root / str(step), 1
      while target.exists():
        target, suffix = target_root / f"{step}.{suffix}", suffix + 1
      source.rename(target)
      logging.warning("Moved the unreadable checkpoint of step %d to %s.", step, target)
  multihost_utils.sync_global_devices(f"perceiver_jax_move_aside_{step}")


def close(manager: ocp.CheckpointManager) -> None:
  """`manager.close()`: waits for a save in flight, unless a process of the run is gone.

  Called in a `finally`: when the exception in flight says another process is lost, the save cannot
  complete (orbax's barrier needs every process) and waiting for it would hold this process until JAX's
  coordination service aborts it; `distributed.naming_lost_processes` then names the lost process.
  """
  if distributed.lost_process_error(sys.exc_info()[1]):
    logging.warning("Not waiting for the checkpoint being written: it needs every process, and one is gone.")
    return
  manager.close()


class CheckpointMismatch(ValueError):
  """A readable checkpoint holds a train state of another structure or shape than the config builds."""


# orbax's name for the single unnamed item of a checkpoint: `<step>/default/`.
_ITEM = "default"


def _layout_error(manager: ocp.CheckpointManager, step: int) -> str | None:
  """Why checkpoint `step` cannot be a whole checkpoint, from its directory alone, or None.

  Checked before orbax sees the step: the manager infers once, from the first step it restores, whether
  its checkpoints hold one unnamed item or several, and keeps that for every later restore and save. A
  step missing its item directory would make it expect several items from then on, failing every intact
  checkpoint after it (and the next save) with "Must provide `args` of type `Composite`".
  """
  item = manager.directory / str(step) / _ITEM
  if not item.is_dir():
    return f"{item} is missing"
  if not any(True for _ in item.iterdir()):
    return f"{item} is empty"
  return None


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
    for path, leaf in leaves
  }


def _mismatch(manager: ocp.CheckpointManager, step: int, target: Any) -> str | None:
  """The first differences between checkpoint `step`'s stored shapes and `target`'s, if it can be read."""
  try:
    metadata = ocp.StandardCheckpointer().metadata(manager.directory / str(step) / _ITEM)
    stored = _shapes(getattr(metadata, "item_metadata", metadata))
  except Exception:  # noqa: BLE001  Unreadable metadata: a damaged checkpoint, not another model.
    return None
  if not stored:  # No metadata to compare with: damaged, not another model.
    return None
  wanted = _shapes(target)
  diffs = [
    f"{path}: {stored.get(path, 'absent')} in the checkpoint, {wanted.get(path, 'absent')} in the config"
    for path in sorted(stored.keys() | wanted.keys())
    if stored.get(path) != wanted.get(path)
  ]
  return "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "") if diffs else None


def _drop_closed_loop_noise(hook):
  """An unraisable-exception hook that drops asyncio's "Event loop is closed" and passes on the rest.

  A failed orbax restore leaves callbacks that fire into its closed event loop from other threads; each
  prints a traceback through `sys.unraisablehook` (hundreds per restore), burying the one warning that
  matters. Only that exact error is dropped.
  """

  def drop(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    hook(unraisable)

  drop.perceiver_jax_filter = True
  return drop


if not getattr(sys.unraisablehook, "perceiver_jax_filter", False):
  sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)


class _OrbaxTracebacks:
  """A filter of absl's logger: orbax's error lines keep their message, not their traceback.

  orbax logs the error of a failed background save with its traceback from each thread that sees it (5
  tracebacks for one full disk); the same error reaches the train loop, which ends in one line (its
  traceback with --verbose).
  """

  def filter(self, record) -> bool:
    if record.exc_info and f"{os.sep}orbax{os.sep}" in (record.pathname or ""):
      record.exc_info, record.exc_text = None, None
    return True


_absl_logger = std_logging.getLogger("absl")
if not any(isinstance(f, _OrbaxTracebacks) for f in _absl_logger.filters):
  _absl_logger.addFilter(_OrbaxTracebacks())


class _OrbaxUnretrieved:
  """A filter of asyncio's logger: drops "Future/Task exception was never retrieved" of orbax's reads.

  A failed restore abandons its other reads; whenever the garbage collector finds one, asyncio logs its
  exception with a traceback, long after `restore_latest` named the checkpoint in one warning. Only those
  of orbax's coroutines (named in the message) or raised in orbax's code are dropped.
  """

  def filter(self, record) -> bool:
    message = record.getMessage()
    if not message.startswith(("Future exception was never retrieved", "Task exception was")):
      return True
    if f"{os.sep}orbax{os.sep}" in message:  # A task's repr names its coroutine's file.
      return False
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
      if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
        return False
      tb = tb.tb_next
    return True


_asyncio_logger = std_logging.getLogger("asyncio")
if not any(isinstance(f, _OrbaxUnretrieved) for f in _asyncio_logger.filters):
  _asyncio_logger.addFilter(_OrbaxUnretrieved())


def disk_full(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is a full disk or quota (orbax's RESOURCE_EXHAUSTED, ENOSPC)."""
  while error is not None:
    text = str(error).lower()
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
      return True
    # tensorstore's write errors; not XLA's "RESOURCE_EXHAUSTED: Out of memory" of a device.
    if "resource_exhausted" in text and "writ" in text and "out of memory" not in text:
      return True
    error = error.__cause__ or error.__context__
  return False


class _QuietAsyncio:
  """Keeps orbax's asyncio noise of a failed restore (hundreds of "Event loop is closed") off the log.

  The exception that matters reaches `restore_latest`, which logs one warning per checkpoint it skips.
  """

  def __enter__(self):
    import logging as std_logging

    self._logger = std_logging.getLogger("asyncio")
    self._level = self._logger.level
    self._logger.setLevel(std_logging.CRITICAL)
    return self

  def __exit__(self, *exc_info):
    self._logger.setLevel(self._level)


def restore_latest(
  manager: ocp.CheckpointManager,
  target: Any,
  steps: Sequence[int] | None = None,
  move_aside_corrupt: bool = False,
) -> tuple[Any, int | None]:
  """(state, step) of the newest readable checkpoint among `steps` (default: all), or (None, None).

  An unreadable checkpoint is logged with its step and error, then the one before it is tried. With
  `move_aside_corrupt` (a training run, which will write those steps again) it is moved aside. A failed
  restore leaves the manager as it was, so the next step restores as a fresh manager would.

  Raises:
    CheckpointMismatch: a readable checkpoint stores other shapes than `target` (another model or
      optimizer): nothing is moved aside.
  """
  moved = False
  for step in sorted(manager.all_steps() if steps is None else steps, reverse=True):
    state, error, what = None, _layout_error(manager, step), "unreadable"
    # Shapes first, from the metadata alone: a restore that fails on them leaves orbax's reads of the
    # other arrays behind, each printing a traceback when collected. Every process reads the same
    # metadata, so all of them raise.
    mismatch = _mismatch(manager, step, target) if error is None else None
    if mismatch:
      raise CheckpointMismatch(
        f"The checkpoint of step {step} in {manager.directory} holds another train state than this "
        f"config builds ({mismatch}); train this config into a new workdir."
      )
    if error is None:
      try:
        with _QuietAsyncio():
          state = manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as e:  # noqa: BLE001  Whatever went wrong, the previous checkpoint may be fine.
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"  # One line.
    if error is None:
      custom, unreadable = _read_step_metadata(manager, step)
      recorded = custom.get(CHECKSUM)
      since = checksums_since(manager.directory) if not recorded else None
      read = state_checksum(state) if recorded else None
      if recorded and read != recorded:
        state, what = None, "damaged"
        error = f"its arrays read back with sha256 {read[:12]}..., saved with {str(recorded)[:12]}..."
      elif not recorded and since is not None and step >= since:
        state, what = None, "damaged"
        error = unreadable or f"{manager.directory / str(step) / _STEP_METADATA} holds no checksum"
        error += f", though every checkpoint here since step {since} records one ({CHECKSUMS_SINCE})"
      elif not recorded:
        logging.warning(
          "Checkpoint of step %d in %s was saved before checksums were recorded: restored unchecked.",
          step,
          manager.directory,
        )
    if all_processes(error is None):
      if moved:
        manager.reload()
      return state, step
    logging.warning(
      "Checkpoint of step %d in %s is %s (%s); %s.",
      step,
      manager.directory,
      what,
      error or "another process failed to read it",
      "moving it aside and trying the previous one" if move_aside_corrupt else "trying the previous one",
    )
    if move_aside_corrupt:
      _move_aside(manager, step)
      moved = True
  if moved:
    manager.reload()
  return None, None


class PreemptionWatcher:
  """Turns SIGTERM (and Ctrl-C) into a request to save and stop at a step boundary every process agrees on.

  Use as a context manager around the train loop and the wait for its last save, and call
  `stop_requested(step)` at every step boundary on every process. A single process handles SIGTERM and
  SIGINT itself until the context exits (the previous handlers are restored then): the first one stops
  the run at the next step boundary, later ones only log that the save goes on, so that a cluster that
  signals twice cannot kill a checkpoint half-written (SIGKILL aside). Several processes leave SIGTERM to
  JAX's coordination service (`jax.distributed` installs its preemption notifier): a notice on any
  process starts the service's sync protocol, and `multihost_utils.reached_preemption_sync_point` turns
  True on every process at the same step, with no device work or host fetch added to the steps.
  """

  def __init__(
    self,
    mesh: Mesh | None = None,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    hold_after_stop: bool = False,
  ):
    """`hold_after_stop`: after a stop by a signal, leave the SIGTERM handler (which only logs) in place, for
    a process that ends with the run: a later SIGTERM would otherwise kill it (status -15) mid-exit."""
    del mesh  # The agreement goes through the coordination service, not the devices.
    self._signals = tuple(signals)
    self._hold, self._signalled = hold_after_stop, False
    self._received = threading.Event()
    self._previous: dict[int, Any] = {}
    self._calls = 0
    state = jax._src.distributed.global_state  # noqa: SLF001  Whether the preemption service runs.
    self._service = jax.process_count() > 1 and state.preemption_sync_manager is not None
    if jax.process_count() > 1 and not self._service:
      logging.warning(
        "JAX's preemption service is off (jax_enable_preemption_service): SIGTERM stops nothing."
      )

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if not self._received.is_set():
      logging.warning("Received %s: saving a checkpoint at the next step boundary, then stopping.", name)
    else:
      logging.warning(
        "Received %s again: still saving the checkpoint, then stopping (kill -9 stops at once, unsaved).",
        name,
      )
    self._signalled = True
    self._received.set()

  def __enter__(self) -> PreemptionWatcher:
    mine = self._signals
    if self._service:
      logging.info("SIGTERM on any process stops all of them at one step (JAX's preemption sync).")
      mine = ()  # Ctrl-C of one process of several: KeyboardInterrupt, the others stop on its absence.
    if mine and threading.current_thread() is threading.main_thread():
      for s in mine:
        self._previous[s] = signal.signal(s, self._handle)
    elif mine:
      logging.warning("The train loop runs outside the main thread: preemption signals go unnoticed.")
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      if not (self._hold and self._signalled and s == signal.SIGTERM):
        signal.signal(s, handler)
    self._previous = {}

  def request_stop(self) -> None:
    """What the signal handler does, for a single process; for tools and tests that stop a run."""
    self._received.set()

  def stop_requested(self, step: int | None = None) -> bool:
    """Whether every process is to save and stop after `step`; call at every step boundary on every process.

    `step` must be the same on all processes (the train step just taken); without it, calls are counted.
    """
    self._calls += 1
    if not self._service:
      return self._received.is_set()
    if multihost_utils.reached_preemption_sync_point(self._calls if step is None else int(step)):
      logging.warning("Preemption notice: every process saves and stops after step %s.", step or self._calls)
      return True
    return False
