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


def split_overrides(argv: Sequence[str], name: str = "config") -> tuple[list[str], dict[str, str]]:
  """`argv` without its `--<name>.a.b=v` overrides, and those overrides as {'a.b': 'v'} (texts, in order).

  The one reader of the overrides: config flags, experiments/evaluate.py and scripts/sweep.py use it.
  """
  prefix = f"--{name}."
  rest, overrides = [], {}
  for arg in argv:
    if not arg.startswith(prefix):
      rest.append(arg)
      continue
    key, sep, value = arg[len(prefix) :].partition("=")
    if not sep:
      raise ValueError(f"{arg} has no value; write {prefix}{key}=VALUE.")
    overrides[key] = value
  return rest, overrides


def load_config(spec: str, overrides: dict[str, str], name: str = "config"):
  """`config_args.load(spec)` with the `--<name>.a.b=v` override texts set, each as its field's type.

  Raises:
    FileNotFoundError: no such config file. ValueError: an unknown variant word, field or value.
  """
  config = config_args.load(spec)
  known = config_args.leaf_paths(config)
  for key, text in overrides.items():
    if key not in known:
      raise ValueError(config_args.unknown_field_message(config, key, f"--{name}.{key}"))
    config_args.set_path(config, key, config_args.parse_field_value(config, key, text))
  config.lock()  # A field the code misspells is an error, not a new field.
  return config


class ConfigFlag:
  """The config of `--<name>=path[:variants]` and its `--<name>.a.b=v` overrides (`value`), loaded once.

  `parse_flags` sets the overrides aside before absl parses the flags and loads the config right after, so
  a missing file, an unknown word or field, or a config file that raises is one line (exit status 2).
  """

  def __init__(self, name: str, holder: flags.FlagHolder):
    self.name = name
    self._holder = holder
    self.overrides: dict[str, str] = {}
    self._config = None

  @property
  def spec(self) -> str | None:
    return self._holder.value

  @property
  def value(self):
    if self._config is None:
      if not self.spec:
        raise ValueError(f"Give --{self.name}=FILE.py[:variants], e.g. --{self.name}=configs/digits.py.")
      self._config = load_config(self.spec, self.overrides, self.name)
    return self._config


_CONFIG_FLAGS: list[ConfigFlag] = []


def define_config_file(name: str, default: str | None, help_string: str) -> ConfigFlag:
  """A `--<name>=path[:variants]` flag whose `.value` is `config_args.load`'s config, overrides applied.

  The one way an entry point takes a config (it must run through `cli.run`); replaces
  `config_flags.DEFINE_config_file`, which loaded the file its own way.
  """
  flag = ConfigFlag(name, flags.DEFINE_string(name, default, help_string))
  _CONFIG_FLAGS.append(flag)
  return flag


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
    for flag in _CONFIG_FLAGS:
      argv, flag.overrides = split_overrides(argv, flag.name)
    rest = (parse or flags.FLAGS)(argv)
    for flag in _CONFIG_FLAGS:
      if flag.spec:
        flag.value  # noqa: B018  Loaded now: its errors are the flags' (exit status 2).
    return rest
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001  Whatever the flags got wrong, say it in one line.
    if _verbose(argv):
      raise
    _fail(e, 2, argv)
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
