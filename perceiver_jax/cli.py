"""What every entry point shares: bad input ends in one `error: ...` line and a non-zero exit.

`run(main)` replaces `absl.app.run(main)`: an exception while the flags are parsed (an unknown
`--config.a.b` field, a missing or broken config file) or while `main` runs is printed as one line naming
what to fix, and the process exits with status 1 (2 for flags). `--verbose` shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from perceiver_jax import config_args

_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, show the whole traceback, not one line.")


def _verbose(argv: Sequence[str]) -> bool:
  return any(a in ("--verbose", "-verbose") for a in argv)


def _config_key_message(argv: Sequence[str], error: Exception) -> str | None:
  """For an unknown `--config.a.b=v` field: the message naming it and the nearest known fields."""
  if not isinstance(error, (AttributeError, KeyError)):
    return None
  config = _load_config(argv, "config", "")
  if config is None or not hasattr(config, "items"):
    return None
  known = config_args.leaf_paths(config)
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config.") :].split("=", 1)[0]
      if key not in known:
        return config_args.unknown_field_message(config, key, f"--config.{key}")
  return None


def _load_config(argv: Sequence[str], name: str, default: str):
  """The config `--<name>=path[:arg]` in argv (else `default`) names, without its overrides, or None."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), default)
  try:
    return config_args.load(spec)
  except Exception:  # noqa: BLE001  Then the message goes without the nearest fields.
    return None


def define_config_file(name: str, default: str, help_string: str):
  """`config_flags.DEFINE_config_file`, with an unknown `--<name>.a.b=v` field as one line (exit status 2).

  config_flags applies the overrides in sys.argv when the flag is defined, at import, before absl's
  flag parsing: an unknown field fails there, as an AttributeError without the field's path.
  """
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file(name, default, help_string)
  except (AttributeError, KeyError) as e:
    if _verbose(sys.argv):
      raise
    config = _load_config(sys.argv, name, default)
    prefix = f"--{name}."
    keys = [a[len(prefix) :].split("=", 1)[0] for a in sys.argv if a.startswith(prefix)]
    known = config_args.leaf_paths(config) if config is not None else []
    bad = next((k for k in keys if k not in known), None)
    if config is not None and bad is not None:
      _fail(e, 2, sys.argv, config_args.unknown_field_message(config, bad, f"--{name}.{bad}"))
    _fail(e, 2, sys.argv)


def _message(error: BaseException) -> str:
  text = str(error).split("\n-----")[0].strip()  # Without JAX's note on its filtered traceback.
  if "Traceback (most recent call last)" in text:  # config_flags quotes the config file's traceback.
    last = [line for line in text.splitlines() if line.strip()][-1]
    text = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
  text = text.strip("'\"") or type(error).__name__
  if isinstance(error, (KeyError, AttributeError)):
    text = text.replace("\\n", " ").replace("\\'", "'")
  return " ".join(text.split())


def _config_frame(error: BaseException, argv: Sequence[str]) -> str:
  """' (in FILE, line N)' when `error` was raised in the config file that `--config=FILE[:arg]` names."""
  import pathlib
  import re
  import traceback

  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if not spec:
    return ""
  path = spec.partition(":")[0]
  target = str(pathlib.Path(path).resolve())
  lines = [
    (frame.filename, frame.lineno)
    for frame in traceback.extract_tb(error.__traceback__)
    if str(pathlib.Path(frame.filename).resolve()) == target
  ]
  # config_flags may quote the config file's traceback in its message instead.
  lines += [(f, int(n)) for f, n in re.findall(r'File "([^"]+)", line (\d+)', str(error)) if f.endswith(path)]
  return f" (in {path}, line {lines[-1][1]})" if lines else ""


def _fail(error: BaseException, status: int, argv: Sequence[str], message: str | None = None) -> None:
  where = _config_frame(error, argv)
  print(f"error: {message or _message(error)}{where} (--verbose shows the traceback)", file=sys.stderr)
  sys.exit(status)


def _stopped_outside_the_loop(signum, frame) -> None:
  del frame
  os.write(
    2,
    b"error: stopped by SIGTERM outside the train loop (starting up or ending); the checkpoints saved so far "
    b"are whole: run the same command again to go on.\n",
  )
  os._exit(128 + signum)


def sigterm_in_one_line() -> None:
  """Until the train loop takes SIGTERM over (it saves and stops), a SIGTERM ends the process in one line.

  An entry point calls this before it imports JAX (a SIGTERM there used to end it silently), and again
  once the backend is up: libtpu, when installed, replaces the handler with its own as it loads, which
  answers SIGTERM with a stack trace. Not for multi-process runs once `jax.distributed` has started: its
  preemption notifier owns SIGTERM then.
  """
  signal.signal(signal.SIGTERM, _stopped_outside_the_loop)


def parse_flags(argv: list[str], parse: Callable[[list[str]], list[str]] | None = None) -> list[str]:
  """absl's flag parsing, with every error as one line (exit status 2)."""
  try:
    return (parse or flags.FLAGS)(argv)
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001  Whatever the flags got wrong, say it in one line.
    if _verbose(argv):
      raise
    if isinstance(e, flags.Error) and "before a value for --config" in str(e):
      message = f"{e}; put --config=FILE before the --config.a.b=v overrides"
    else:
      message = _config_key_message(argv, e)
    _fail(e, 2, argv, message)
  raise AssertionError("unreachable")


def run(
  main: Callable[[list[str]], int | None], parse: Callable[[list[str]], list[str]] | None = None
) -> None:
  """`app.run(main)` with one-line errors; `parse` replaces absl's flag parsing (see `parse_flags`)."""

  def guarded(argv: list[str]) -> int | None:
    try:
      return main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside a train loop (which saves and stops instead).
      if _VERBOSE.value:
        raise
      print(
        "error: interrupted (Ctrl-C) outside the train loop; the checkpoints saved so far are kept: run the "
        "same command again to go on.",
        file=sys.stderr,
      )
      sys.exit(130)
    except Exception as e:  # noqa: BLE001  One line for the user; --verbose for the traceback.
      if _VERBOSE.value:
        raise
      _fail(e, 1, argv)

  app.run(guarded, flags_parser=lambda argv: parse_flags(argv, parse))
