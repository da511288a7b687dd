"""The libtpu this JAX was released with, and the one installed (the TPU compiler and the TPU runtime).

`jax[tpu]` pins one libtpu per JAX release (`libtpu==0.0.42.*` for jax 0.10.2). Another libtpu compiles
other programs (other memory figures: scripts/compile_tpu.py refuses it) and its profiler plugin does not
match jaxlib's (`jax.profiler.start_trace` crashes the process: train.py's profiler does not start then).
"""

from __future__ import annotations

import importlib.metadata


def installed_libtpu() -> str | None:
  """The installed libtpu distribution's version, or None."""
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return None


def required_libtpu() -> str | None:
  """The libtpu the installed jax's `tpu` extra requires, e.g. '==0.0.42.*' (None if it names none)."""
  # packaging reads requirements and version specifiers as pip does (matplotlib and tensorflow require it).
  from packaging.requirements import Requirement

  for line in importlib.metadata.requires("jax") or ():
    requirement = Requirement(line)
    if requirement.name == "libtpu" and requirement.marker and requirement.marker.evaluate({"extra": "tpu"}):
      return str(requirement.specifier) or None
  return None


def libtpu_matches(version: str, spec: str) -> bool:
  """Whether `version` satisfies the specifier `spec` ('==0.0.42.*')."""
  from packaging.specifiers import SpecifierSet

  return SpecifierSet(spec).contains(version, prereleases=True)


def libtpu_mismatch() -> str | None:
  """One sentence when the installed libtpu is not the one the installed jax pins, else None."""
  version, spec = installed_libtpu(), required_libtpu()
  if version is None or spec is None or libtpu_matches(version, spec):
    return None
  jax_version = importlib.metadata.version("jax")
  return f"libtpu {version} is installed, but jax[tpu]=={jax_version} runs TPUs with libtpu{spec}"
