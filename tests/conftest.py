"""Test set-up: 8 fake CPU devices (before JAX starts), configs importable by path, shared helpers.

Helpers used by several test modules live here, never in a test module: configs by path, the tiny digits
run (`TINY`), subprocess runs of the entry points (`child_env`, `train_command`, `run`), checkpoint steps
of a workdir, and the tree comparisons of the property tests. Plain functions are imported with
`from conftest import ...`; fixtures need no import. Tests marked `slow` (pytest.ini) are the integration
tests; `pytest -m "not slow"` leaves them out.
"""

import os

# XLA:CPU's LLVM optimisations off: the suite compiles hundreds of small programs and runs each a few
# times, so compiling dominates (the compile-bound tests take 35-40% less time; matmuls run in the
# precompiled library either way). Subprocess runs get the same flag (`child_env`).
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# libtpu (the test extra; tests/test_compile_tpu.py) takes a machine-wide lock when JAX starts it; test
# workers side by side compile for TPU topologies with no TPU and need no exclusive access.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# The CPU backend only: the suite's devices are the 8 CPU devices above (its meshes, the CPU kernels, the
# bitwise checksums); on a host with an accelerator (a TPU VM with the test extra, a GPU) JAX would run the
# tests there, and every worker would try to take the TPU. test_profiler.py runs a user's environment.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None):
  """`configs/<name>.py`'s get_config(arg), loaded by path (config_args.config_module)."""
  from perceiver_jax import config_args

  return config_args.config_module(str(ROOT / "configs" / f"{name}.py")).get_config(arg)


@pytest.fixture
def config_loader():
  return load_config


# A tiny Perceiver on digits: 12 steps, a checkpoint every 4, one eval at the end.
TINY = (
  "runlocal,num_latents=8,latent_channels=16,num_cross_attends=1,num_latent_transformers=1,"
  "num_self_attends_per_block=1,num_self_heads=2,num_steps=12,checkpoint.every=4,keep=3,log_every=4,"
  "eval_every=12"
)

# experiments/train.py with `data.train_batches` wrapped: TEST_SLOW_FROM=k sleeps TEST_DELAY seconds before
# each batch from index k on; TEST_NAN_AT=k makes batch k (the batch of step k + 1) all NaN.
HELPER = """
import os, runpy, sys, time
import numpy as np
from perceiver_jax import data

slow_from, nan_at = int(os.environ.get("TEST_SLOW_FROM", -1)), int(os.environ.get("TEST_NAN_AT", -1))
delay = float(os.environ.get("TEST_DELAY", 1.0))
original = data.train_batches

def train_batches(config, start_step=0):
  for index, batch in enumerate(original(config, start_step=start_step), start_step):
    if index == nan_at:
      batch = dict(batch, inputs=np.full_like(batch["inputs"], np.nan))
    if 0 <= slow_from <= index:
      time.sleep(delay)
    yield batch

data.train_batches = train_batches
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def child_env(cache_dir=None, devices: int | None = 2, **extra) -> dict[str, str]:
  """This environment with `devices` CPU devices (None: leave it to flags) and a compilation cache.

  XLA's backend optimizations are off, as in the test process: they double the compile time, which
  dominates these tiny runs (every run compared with another one uses the same flags). Runs of several
  processes must not share a persistent cache: only process 0 writes it and the keys differ by process,
  so process 0 would start its collectives while process 1 still compiles, and gloo gives up after 30 s.
  """
  env = dict(os.environ)
  flags = re.sub(
    r"--xla_(force_host_platform_device_count|backend_optimization_level)=\d+", "", env.get("XLA_FLAGS", "")
  )
  flags += " --xla_backend_optimization_level=0"
  if devices is not None:
    flags += f" --xla_force_host_platform_device_count={devices}"
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.update(
    XLA_FLAGS=flags.strip(),
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="2",
    **{k: str(v) for k, v in extra.items()},
  )
  return env


def train_command(workdir, *flags, script="experiments/train.py") -> list[str]:
  """`script` through HELPER (its TEST_* variables), with `--workdir` and no TensorBoard."""
  return [sys.executable, "-c", HELPER, script, f"--workdir={workdir}", "--notensorboard", *flags]


def run(cmd, env, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def steps(workdir) -> list[int]:
  """The steps of the checkpoints in `workdir`, ascending."""
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def assert_trees_close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """One persistent compilation cache per test process: subprocess runs of one program compile it once."""
  path = tmp_path_factory.getbasetemp() / "jax_cache"
  path.mkdir(exist_ok=True)
  return path
