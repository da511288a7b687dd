"""One line instead of JAX's C++ abort when the coordination service stops a multi-process run.

JAX's distributed client ends its process from C++ when the coordination service reports an error: the
coordinator (process 0, which serves the service) is gone, a process missed its heartbeats, or a second
process connected under a process id already taken. It logs a FATAL line, a C++ stack trace and
Python's fault dump (60-odd lines) and aborts within a second, before Python can run again: the
`missed_heartbeat_callback` that would let Python decide cannot be given from Python in jaxlib 0.10
(it fails with std::bad_cast when called). So a multi-process run routes its stderr through a small
filter process, this file run as a script: it passes every line through as it comes, and when the
FATAL line arrives it writes one `error:` line instead, naming what happened and what to do, and drops
the dump that follows (or nothing, when the process's own `error:` line came just before: a survivor
can see the loss in Python too). The filter is a separate process because the one it watches is being
aborted. At exit the process waits until the filter has passed everything on (`drain`), so that a log
file is whole once the process has ended. `--verbose` runs without it.

Standard library only: the filter runs as `python -I stderr_guard.py`, without the package.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys

# The FATAL line of jaxlib's client (xla/pjrt/distributed/client.h) when the service reports an error.
FATAL = "Terminating process because the JAX distributed service detected fatal errors"
# Lines that come just before FATAL from the same cause: held back briefly, dropped when FATAL follows.
_PRECURSORS = ("coordination_service_agent.cc", "coordination_service.cc", "preemption_sync_manager.cc")
_HOLD_S = 1.0
_PARTIAL_S = 0.2  # A line without its end is passed on after this long with nothing more.
_process = None  # The filter, kept so that it is not collected while this process writes to it.
_acks = -1  # Where the filter says it has passed on everything before a SYNC line.
SYNC = b"\0stderr_guard: sync\0\n"


def start(process_id: int, num_processes: int, coordinator_address: str) -> None:
  """Routes this process's stderr (file descriptor 2) through the filter; call once jax.distributed is up.

  The filter writes to what stderr was, ends when every writer of the pipe is gone (this process, however
  it ends), and ignores the terminal's Ctrl-C and the cluster's SIGTERM: this process handles those, and
  its last lines must still get through. It stays until this process ends: JAX's shutdown, after every
  exit handler, may still abort.
  """
  global _process, _acks
  if _process is not None:
    return
  _acks, ack_w = os.pipe()
  facts = {"me": process_id, "count": num_processes, "address": coordinator_address, "ack": ack_w}
  sys.stderr.flush()
  original = os.dup(2)
  _process = subprocess.Popen(
    [sys.executable, "-I", str(pathlib.Path(__file__).resolve()), json.dumps(facts)],
    stdin=subprocess.PIPE,
    stdout=original,
    pass_fds=(ack_w,),
    start_new_session=True,  # Not in the terminal's process group: Ctrl-C goes to this process only.
  )
  os.close(original)
  os.close(ack_w)
  os.dup2(_process.stdin.fileno(), 2)
  _process.stdin.close()  # Descriptor 2 is now the pipe's one writer here.
  atexit.register(drain)


def drain(timeout_s: float = 5.0) -> None:
  """Waits until the filter has passed on all that was written so far; at exit, and before `os._exit`.

  Whoever reads this process's stderr (a log file, a test) then has every line once the process has
  ended (unless JAX's shutdown writes more after it).
  """
  if _process is None or _process.poll() is not None:
    return
  sys.stderr.flush()
  os.write(2, SYNC)
  ready, _, _ = select.select([_acks], [], [], timeout_s)
  if ready:
    os.read(_acks, 1)


# How a process is lost, and what to do then: the words of every line naming a lost process.
HOW_LOST = "killed, crashed, out of memory, or its host went down; its own log or the launcher says why"


def start_again(count: int) -> str:
  return (
    f"Start all {count} processes again with the same command: the run resumes from its newest checkpoint"
  )


def missed_heartbeats(text: str) -> list[int]:
  """The processes the coordination service says missed their heartbeats ("Task 1 heartbeat timeout")."""
  return sorted({int(i) for i in re.findall(r"Task (\d+) heartbeat timeout", text)})


def explain(report: str, me: int, count: int, address: str) -> str:
  """The one line for `report`: the FATAL line, what came just before it and the status lines after it."""
  seen = " ".join(report.split())
  again = f"{start_again(count)} (--verbose shows JAX's own report)."
  duplicate = re.search(r"(\d+) unexpectedly tried to connect with a different incarnation", seen)
  if duplicate:
    k = duplicate.group(1)
    return (
      f"error: a second process connected as process {k} while process {k} of {count} was running: two "
      f"processes were given --process_id={k}, or process {k} was started again alone; jax.distributed then "
      f"stops every process of the run (this is process {me}). Give every process its own --process_id "
      f"(0 .. {count - 1}). {again}"
    )
  if me != 0 and ("Failed to send RPC to coordination service" in seen or "leader task" in seen):
    return (
      f"error: process 0 (the coordinator at {address}) is gone ({HOW_LOST}): its coordination service no "
      f"longer answers process {me} of {count}. This process stops too. {again}"
    )
  listed = re.search(r"stopped sending heartbeats\):\s*((?:\d+[\s,]+)+)", seen + " ")
  lost = [int(t) for t in re.findall(r"\d+", listed.group(1))] if listed else missed_heartbeats(seen)
  lost = sorted(set(lost) - {me})
  if lost:
    many = len(lost) > 1
    return (
      f"error: process{'es' if many else ''} {', '.join(map(str, lost))} of {count} "
      f"{'are' if many else 'is'} gone: {'they' if many else 'it'} stopped sending heartbeats to the "
      f"coordinator ({HOW_LOST}), seen by process {me}. This process stops too. {again}"
    )
  status = " ".join(seen.split(FATAL, 1)[-1].split("absl::Status:", 1)[-1].split())[:200]
  return (
    f"error: jax.distributed stopped process {me} of {count} on an error of the run's coordination service, "
    f"most likely because another process ended ({HOW_LOST}): {status}. {again}"
  )


class _Filter:
  """Passes lines from the watched process on; holds back the few that may precede FATAL (see above).

  A log record (glog's "E1204 22:16:11.5 ..." prefix) of the coordination service is held for up to
  `_HOLD_S`, with the lines that continue it (a status spans several lines); FATAL turns what is held,
  FATAL and its status lines into one line; anything else lets what is held go first, in order.
  """

  def __init__(self, facts: dict, sink):
    self.facts, self.sink = facts, sink
    self.held: list[str] = []
    self.held_since = 0.0
    self.report: list[str] | None = None  # FATAL's report while its status lines come in.
    self.done = False  # The one line written: the rest is the abort's dump.
    self.said = False  # An `error:` line of the process itself has passed.

  def line(self, text: str) -> None:
    if text == SYNC[:-1].decode():
      self.release()
      os.write(self.facts["ack"], b".")
      return
    if self.done:
      return
    if self.held and self.report is None and _now() - self.held_since >= _HOLD_S:
      self.release()  # A steady stream of other lines: what was held waited long enough.
    record = re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", text) is not None
    if self.report is not None:
      if text.startswith(("*** Check failure", "RPC: ", "Fatal Python error")) or record:
        self.answer()
      else:
        self.report.append(text)
    elif FATAL in text:
      self.report = [*self.held, text]
      self.held = []
    elif (record and any(p in text for p in _PRECURSORS)) or (self.held and not record):
      self.held_since = self.held_since if self.held else _now()
      self.held.append(text)
    else:
      self.release()
      self.write(text)
      self.said = self.said or text.startswith("error: ")

  def answer(self) -> None:
    self.done = True
    if self.said:
      return  # The process said what happened itself (`distributed.naming_lost_processes`) just before.
    facts = self.facts
    self.write(explain("\n".join(self.report), facts["me"], facts["count"], facts["address"]))

  def release(self) -> None:
    for text in self.held:
      self.write(text)
    self.held = []

  def write(self, text: str) -> None:
    self.sink.write((text + "\n").encode("utf-8", "replace"))
    self.sink.flush()

  def timeout(self) -> float | None:
    """Seconds until what is held, or FATAL's report, must go out; None when nothing waits."""
    if self.done or not (self.held or self.report is not None):
      return None
    return max(0.0, self.held_since + _HOLD_S - _now()) if self.report is None else _HOLD_S

  def tick(self) -> None:
    """Called when `timeout()` passed with nothing more to read."""
    if self.report is not None and not self.done:
      self.answer()
    elif not self.done and self.held and _now() - self.held_since >= _HOLD_S:
      self.release()


def _filter(facts: dict, source: int = 0, sink=None) -> None:
  """Copies `source` to `sink` line by line until its end, answering FATAL with one line (see above)."""
  guard = _Filter(facts, sink if sink is not None else sys.stdout.buffer)
  pending = b""
  while True:
    waits = [w for w in (guard.timeout(), _PARTIAL_S if pending else None) if w is not None]
    ready, _, _ = select.select([source], [], [], min(waits) if waits else None)
    if not ready:
      guard.tick()
      if pending and not guard.done:  # A line without its end, and nothing more for now: pass it on.
        guard.release()
        guard.sink.write(pending)
        guard.sink.flush()
        pending = b""
      continue
    chunk = os.read(source, 65536)
    if not chunk:
      break
    *lines, pending = (pending + chunk).split(b"\n")
    for raw in lines:
      guard.line(raw.decode("utf-8", "replace"))
  if guard.report is None and pending:  # The last line, without its end: as it came.
    guard.release()
    guard.sink.write(pending)
    guard.sink.flush()
  if guard.report is not None and not guard.done:
    guard.answer()
  guard.release()


def _now() -> float:
  return os.times().elapsed


if __name__ == "__main__":
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Ends with its input, after the watched process.
  facts = json.loads(sys.argv[1])
  try:
    _filter(facts)
  except Exception as e:  # noqa: BLE001  Whatever went wrong here, the watched process keeps its stderr.
    sys.stdout.buffer.write(f"(stderr_guard: {e!r}; passing stderr through unchanged)\n".encode())
    sys.stdout.buffer.flush()
    while chunk := os.read(0, 65536):
      if SYNC in chunk:  # Still answered, so that the process's exit does not wait for nothing.
        chunk = chunk.replace(SYNC, b"")
        os.write(facts["ack"], b".")
      sys.stdout.buffer.write(chunk)
      sys.stdout.buffer.flush()
