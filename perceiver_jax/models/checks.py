"""Argument checks the model constructors share with the config checks."""

from __future__ import annotations

from typing import Any


def check_positive(prefix: str = "", **values: Any) -> None:
  """ValueError naming the first of `values` that is not a positive int (bools are not ints here).

  `prefix` is the config path of the fields ('train.'), so the message names what to change.
  """
  for name, value in values.items():
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{prefix}{name}={value!r} must be a positive integer.")
