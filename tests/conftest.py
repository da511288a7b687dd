"""Test set-up: 8 fake CPU devices (before JAX starts), configs importable by path, small helpers."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# libtpu (the test extra; tests/test_compile_tpu.py) takes a machine-wide lock when JAX starts it; test
# workers side by side compile for TPU topologies with no TPU and need no exclusive access.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# The CPU backend only: with the installed libtpu's plugin loaded (no TPU here) jax.profiler segfaults.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None):
  """`configs/<name>.py`'s get_config(arg), loaded by path as config_flags does."""
  spec = importlib.util.spec_from_file_location(f"config_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture
def config_loader():
  return load_config
