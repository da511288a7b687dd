r"""What `checkpoint.save` costs the train loop at a config's size (params + optimizer state); one JSON line.

  python scripts/bench_checkpoint_save.py                          # the paper's ImageNet model, 3 rounds
  python scripts/bench_checkpoint_save.py --config=configs/digits.py --rounds=5

The train state is the config's own (its model's parameters, its optimizer's state: LAMB's two moments for
configs/imagenet.py), built from shapes alone (`jax.eval_shape`) and filled with random numbers, on one CPU
device. Per round, in this order: the host copy alone (`jax.device_get`), the sha256 alone (on host bytes),
`checkpoint.state_checksum` (both: what `save` adds), `checkpoint.check_finite` (which `save` runs
first; compiled in round 1), and `checkpoint.save` into a temporary directory,
timed until it returns (what the loop waits for: the finiteness check, the checksum, orbax's host copy)
and until the write is done (in the background while training goes on); then orbax's save alone (as
before checksums: `orbax_*`). The figures are medians over
rounds; `load` is the one-minute load average when the rounds started.
"""

import argparse
import hashlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perceiver_jax import config_args  # noqa: E402
from perceiver_jax.training import checkpoint, parallel, train  # noqa: E402


def random_state(config):
  """The config's train state (shapes from `eval_shape`), each float leaf filled with normal numbers."""
  trainer = train.Trainer(config, parallel.make_mesh(jax.devices()[:1]), total_steps=1000)
  shapes = jax.eval_shape(lambda: train.init_state(config, trainer.model, trainer.optimizer))
  rng = np.random.default_rng(0)

  def fill(s):
    if np.issubdtype(s.dtype, np.floating):
      return jax.device_put(rng.standard_normal(s.shape, dtype=np.float32).astype(s.dtype))
    return jax.device_put(np.zeros(s.shape, s.dtype))

  return jax.tree.map(fill, shapes)


def _cpu() -> str:
  lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=str(ROOT / "configs" / "imagenet.py"))
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  config = config_args.load(args.config)
  state = random_state(config)
  leaves = jax.tree.leaves(state)
  nbytes = sum(x.nbytes for x in leaves)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  names = ("host_copy_s", "sha256_s", "state_checksum_s", "check_finite_s", "save_returns_s", "save_done_s")
  times = {k: [] for k in (*names, "orbax_returns_s", "orbax_done_s")}
  load = os.getloadavg()[0]
  with tempfile.TemporaryDirectory(prefix="bench_save_") as root:
    manager = checkpoint.make_manager(root, keep=2 * args.rounds)  # Nothing deleted meanwhile.
    for r in range(args.rounds):
      start = time.perf_counter()
      host = [np.asarray(x) for x in jax.device_get(leaves)]
      times["host_copy_s"].append(time.perf_counter() - start)
      start = time.perf_counter()
      digest = hashlib.sha256()
      for x in host:
        digest.update(np.ascontiguousarray(x).tobytes())
      times["sha256_s"].append(time.perf_counter() - start)
      del host
      start = time.perf_counter()
      checkpoint.state_checksum(state)
      times["state_checksum_s"].append(time.perf_counter() - start)
      start = time.perf_counter()
      checkpoint.check_finite(state, r)
      times["check_finite_s"].append(time.perf_counter() - start)
      start = time.perf_counter()
      checkpoint.save(manager, r + 1, state)
      times["save_returns_s"].append(time.perf_counter() - start)
      manager.wait_until_finished()
      times["save_done_s"].append(time.perf_counter() - start)
      start = time.perf_counter()  # orbax alone, as before the checksum: no finiteness check, no hash.
      manager.save(100 + r, args=ocp.args.StandardSave(state), force=True)
      times["orbax_returns_s"].append(time.perf_counter() - start)
      manager.wait_until_finished()
      times["orbax_done_s"].append(time.perf_counter() - start)
    manager.close()
  result = {
    "config": args.config,
    "params": params,
    "state_bytes": nbytes,
    "leaves": len(leaves),
    "rounds": args.rounds,
    "load": round(load, 2),
    "cpu": _cpu(),
    **{k: round(statistics.median(v), 3) for k, v in times.items()},
    "sha256_gb_per_s": round(nbytes / statistics.median(times["sha256_s"]) / 1e9, 3),
  }
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
