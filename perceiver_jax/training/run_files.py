"""The run files of a workdir: config.json, metrics.jsonl, results.json, and the workdir's lock.

Every path goes through `etils.epath`, so a workdir may be local or remote (`gs://...`). Each file is
written whole: to a temporary file renamed over the old one, so a reader sees the old or the new file,
never a part. metrics.jsonl is rewritten whole at each write as well (object stores cannot append); a
last line torn anyway (a full disk, a copy cut short) is dropped with a warning when it is read. A file
that cannot be read raises `RunFileError` naming it.

The lock (`workdir/lock`, JSON {host, pid, boot_id, start_time}) keeps a second run out of a busy
workdir. One process takes it (process 0 in a multi-process run); a lock left by a dead process on the
same host is taken over. A holder is alive when a process of its pid runs with its start time (field 22 of
/proc/<pid>/stat, clock ticks since boot) since the same boot (/proc/sys/kernel/random/boot_id): a pid
alone is not enough, as a container restarted in a fresh PID namespace runs as pid 1 again, and so was
its dead predecessor.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from absl import logging
from etils import epath

CONFIG, METRICS, RESULTS, LOCK = "config.json", "metrics.jsonl", "results.json", "lock"
# Recorded in config.json, outside the config itself: the config changes accepted by resumes.
CONFIG_CHANGES = "config_changes"

# Config fields a resume may change: the run's length, logging, eval and checkpoint intervals, and the
# speed switches that change neither the function nor the parameters (docs/performance.md).
RESUMABLE_CHANGES = (
  "config_arg",
  "train.num_steps",
  "train.num_epochs",
  "train.log_every",
  "train.eval_every",
  "train.eval_batch_size",
  "checkpoint.every",
  "checkpoint.keep",
  "model.attention_impl",
  "model.cross_attention_chunk_size",
  "model.scan_repeats",
  "model.scan_blocks",
  "model.remat",
)

# What may differ when a run's checkpoint is evaluated (experiments/evaluate.py --config.a.b=value): where
# the data is and how it is batched, and switches that leave the function and the parameters as they are.
EVAL_CHANGES = (
  "dataset.data_dir",
  "dataset.eval_split",
  "dataset.eval_windows",
  "dataset.download",
  "dataset.manual_dir",
  "dataset.blank_streams",
  "train.eval_batch_size",
  "model.attention_impl",
  "model.cross_attention_chunk_size",
)

# Fields declared after runs were saved without them, with the value the code took when they were absent:
# a resume that sets one to that value changes nothing.
ADDED_FIELDS = {
  "input.front_end": "image",
  "model.scan_blocks": False,
  "task": "single_label",
}


class RunFileError(ValueError):
  """A run file that cannot be read or written; the message names it."""


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock."""


def write_text(path: epath.PathLike, text: str) -> None:
  """Writes `text` to `path` whole: a temporary file beside it, renamed over it."""
  path = epath.Path(path)
  tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
  try:
    tmp.write_text(text)
    tmp.replace(path)
  except OSError as e:  # A full disk or a read-only mount: leave no temporary file behind, name the file.
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass
    raise RunFileError(
      f"Cannot write {path} ({type(e).__name__}: {e}); free space or fix the workdir."
    ) from e


def write_json(path: epath.PathLike, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: epath.PathLike) -> Any:
  """The JSON value in `path`; RunFileError naming the file when it is missing or not JSON."""
  path = epath.Path(path)
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise RunFileError(f"Cannot read {path} ({type(e).__name__}: {e}).") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise RunFileError(
      f"{path} is not valid JSON ({e}); restore it from a copy, or move the run elsewhere."
    ) from e


def read_jsonl(path: epath.PathLike) -> list[dict[str, Any]]:
  """The records of a JSON-lines file ([] if absent); a torn last line is dropped with a warning.

  Raises:
    RunFileError: a line other than the last is not a JSON object (the file is damaged, not torn).
  """
  path = epath.Path(path)
  if not path.exists():
    return []
  try:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise RunFileError(f"Cannot read {path} ({type(e).__name__}: {e}).") from e
  records = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError as e:
      if number == len(lines):
        logging.warning("Dropped the torn last line %d of %s (%s): %.80r", number, path, e, line)
        break
      raise RunFileError(
        f"Line {number} of {path} is not a JSON object ({e}); fix or delete that line to resume."
      ) from e
    records.append(record)
  return records


def write_jsonl(path: epath.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
  write_text(path, "".join(json.dumps(dict(r)) + "\n" for r in records))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; a ConfigDict is flattened through its dict."""
  if hasattr(tree, "to_dict"):
    tree = tree.to_dict()
  if not isinstance(tree, Mapping):
    return {prefix: list(tree) if isinstance(tree, tuple) else tree}
  flat = {}
  for key, value in tree.items():
    flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def config_diff(old: Any, new: Any, ignore: Iterable[str] = (CONFIG_CHANGES,)) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old value, new value)} for every leaf that differs between two configs.

  Either config may be a ConfigDict or its JSON dict (tuples and lists compare equal); a field present in
  one only has the value None in the other, but a field of ADDED_FIELDS missing from `old` has its value
  there. Fields under an `ignore` prefix are left out.
  """
  a, b = flatten(json.loads(json.dumps(flatten(old), default=str))), flatten(new)
  b = json.loads(json.dumps(b, default=str))
  a = {**{k: v for k, v in ADDED_FIELDS.items() if k in b}, **a}
  ignore = tuple(ignore)
  return {
    key: (a.get(key), b.get(key))
    for key in sorted(a.keys() | b.keys())
    if a.get(key) != b.get(key) and not any(key == p or key.startswith(p + ".") for p in ignore)
  }


def experiment_changes(changes: Mapping[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
  """The part of a `config_diff` that changes the experiment (not in RESUMABLE_CHANGES)."""
  return {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, under another user.
    return True
  return True


def _boot_id() -> str | None:
  try:
    return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError:
    return None


def _start_time(pid: int) -> int | None:
  """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.

  None when unknown, or when the process has ended and waits to be reaped (a zombie, state Z or X: a
  SIGKILLed run whose launcher has not yet collected it holds nothing any more).
  """
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # The name, in parentheses, may hold spaces.
    return None if fields[0] in ("Z", "X") else int(fields[19])
  except (OSError, ValueError, IndexError):
    return None


def _holder_alive(holder: Mapping[str, Any], me: Mapping[str, Any]) -> bool:
  """Whether the holder of a lock written on this host still runs (see the module docstring)."""
  pid = int(holder["pid"])
  if holder.get("boot_id") and me.get("boot_id") and holder["boot_id"] != me["boot_id"]:
    return False  # The machine rebooted since: every process of that boot is gone.
  if holder.get("start_time") is not None and me.get("start_time") is not None:
    return _start_time(pid) == holder["start_time"]
  return _alive(pid) and pid != me["pid"]  # A lock of an older version: the pid is all there is.


class WorkdirLock:
  """`workdir/lock` held while a run trains there; a context manager.

  Acquiring raises WorkdirBusy naming the holder (host, pid) when it lives or runs on another host (whose
  processes this one cannot see); a lock of a dead process of this host is taken over with a warning.
  """

  def __init__(self, workdir: epath.PathLike):
    self.path = epath.Path(workdir) / LOCK
    pid = os.getpid()
    self.owner = {
      "host": socket.gethostname(),
      "pid": pid,
      "boot_id": _boot_id(),
      "start_time": _start_time(pid),
    }
    self._held = False

  def _create(self) -> bool:
    text = json.dumps(self.owner)
    if "://" in os.fspath(self.path):  # Object stores have no exclusive create: check, then write.
      if self.path.exists():
        return False
      self.path.write_text(text)
      return True
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if self._create():
        self._held = True
        return
      try:
        holder = json.loads(self.path.read_text())
        host, pid = str(holder["host"]), int(holder["pid"])
      except FileNotFoundError:
        continue  # Released meanwhile.
      except (ValueError, KeyError, TypeError, OSError):
        holder, host, pid = None, None, None
      if holder is not None and (host != self.owner["host"] or _holder_alive(holder, self.owner)):
        raise WorkdirBusy(
          f"The workdir {self.path.parent} is in use by the run of pid {pid} on host {host} (its lock "
          f"{self.path}); wait for it to end, or train into another workdir. If that process is gone "
          "(another host's run that crashed), delete the lock file."
        )
      logging.warning(
        "Taking over the lock %s of a process that is gone (%s).",
        self.path,
        f"pid {pid} on {host}" if holder is not None else "unreadable lock",
      )
      self.path.unlink(missing_ok=True)
    raise WorkdirBusy(f"Could not take the lock {self.path}; another run keeps taking it.")

  def release(self) -> None:
    if self._held:
      self._held = False
      try:
        if json.loads(self.path.read_text()) == self.owner:
          self.path.unlink()
      except (OSError, ValueError):
        pass

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
