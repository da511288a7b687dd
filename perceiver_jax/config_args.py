"""Parsing of the `--config=path.py:arg` argument shared by every config file.

`arg` is a comma-separated list of variant words (`permuted,runlocal`) and `key=value` pairs
(`num_cross_attends=4`, `model.latent_channels=256`). A bare key names the one config leaf with that
name; a dotted key names a path. Anything unknown is a `ValueError` that lists what is known, so a
typo never silently trains the wrong model.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections


def parse_value(text: str) -> Any:
  """An override's value: a Python literal ('3', '0.1', 'None', '(1, 2)'), else the plain string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_field_value(config: ml_collections.ConfigDict, path: str, text: str) -> Any:
  """An override's value from its text, as the field at dotted `path` holds it.

  A string field keeps the text as it is ('007' stays a string), a bool field takes true/false in any case,
  any other field a Python literal (`parse_value`).
  """
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  raw = node._fields.get(leaf)  # noqa: SLF001  A FieldReference (a placeholder) knows its type.
  kind = raw.get_type() if isinstance(raw, ml_collections.FieldReference) else type(raw)
  if kind is str:
    return text
  if kind is bool and text.lower() in ("true", "false"):
    return text.lower() == "true"
  return parse_value(text)


def parse_arg(arg: str | None) -> tuple[list[str], dict[str, Any]]:
  """Splits 'a,b,k=v' into (['a', 'b'], {'k': v}); values are Python literals or plain strings."""
  words, overrides = [], {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" in item:
      key, value = (s.strip() for s in item.split("=", 1))
      overrides[key] = parse_value(value)
    else:
      words.append(item)
  return words, overrides


def leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf's dotted path: ['seed', 'model.num_latents', ...]."""
  paths = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      paths += leaf_paths(value, path + ".")
    else:
      paths.append(path)
  return paths


def nearest_fields(config: ml_collections.ConfigDict, key: str, n: int = 3) -> list[str]:
  """The config fields nearest to `key` by spelling, comparing whole paths and last names."""
  paths = leaf_paths(config)
  near = difflib.get_close_matches(key, paths, n=n, cutoff=0.5)
  by_name = {p.rsplit(".", 1)[-1]: p for p in paths}
  near += [by_name[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], by_name, n=n, cutoff=0.6)]
  if not near and "." in key:  # A known section: list its fields.
    section = key.rsplit(".", 1)[0] + "."
    near = [p for p in paths if p.startswith(section)]
  return list(dict.fromkeys(near))[:n] or paths[:n]


def unknown_field_message(config: ml_collections.ConfigDict, key: str, what: str) -> str:
  """'<what> names no config field; nearest: a.b, c.d.' for an unknown `key`."""
  return f"{what} names no config field; nearest: {', '.join(nearest_fields(config, key))}."


def set_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets `config.<key>` where key is a dotted path or a unique leaf name."""
  paths = leaf_paths(config)
  if key not in paths:
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    if len(matches) > 1:
      raise ValueError(f"Config override {key!r} is ambiguous: {', '.join(matches)}; use a dotted path.")
    if not matches:
      raise ValueError(unknown_field_message(config, key, f"Config override {key!r}"))
    key = matches[0]
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


class UnknownVariant(ValueError):
  """A variant word the config does not know; `known` lists the words it does."""

  def __init__(self, word: str, known: list[str]):
    super().__init__(f"Unknown config variant {word!r}; known variants: {', '.join(known)}.")
    self.known = known


def apply_arg(
  config: ml_collections.ConfigDict,
  arg: str | None,
  variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
) -> ml_collections.ConfigDict:
  """Applies the variant words in order, then the key=value overrides, to `config`."""
  words, overrides = parse_arg(arg)
  for word in words:
    if word not in variants:
      raise UnknownVariant(word, sorted(variants))
    variants[word](config)
  for key, value in overrides.items():
    set_path(config, key, value)
  config.config_arg = arg or ""
  return config


def config_module(path: str):
  """The config file at `path` (a local .py file defining `get_config(arg=None)`), imported by path.

  The one way this codebase loads a config by path (experiments, scripts, tools, tests); entry points with a
  `--config` flag go through `cli.define_config_file` (this, then their overrides), whose errors are one line.

  Raises:
    FileNotFoundError: no such file.
  """
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"No such file: config {path!r}.")
  spec = importlib.util.spec_from_file_location(f"config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(file: str, name: str):
  """The module `<name>.py` beside the config file `file`, loaded by path: `sibling(__file__, "common")`.

  Config files are loaded by path, not as a package, so they reach configs/common.py this way.
  """
  return config_module(str(pathlib.Path(file).with_name(f"{name}.py")))


def load(config: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The config `path[:arg]` names (`arg`: variant words and key=value pairs), then `overrides` applied.

  Raises:
    FileNotFoundError: no such file. ValueError: an unknown variant word or field.
  """
  path, _, arg = config.partition(":")
  built = config_module(path).get_config(arg or None)
  for key, value in (overrides or {}).items():
    set_path(built, key, value)
  return built
