r"""Steps/s of a 2-process run (127.0.0.1, gloo) with each way of agreeing on a preemption; one JSON line.

  python scripts/bench_preemption_sync.py                    # 3 rounds, each mode once per round
  python scripts/bench_preemption_sync.py --rounds=5 --config=configs/digits.py:runlocal,num_steps=600

`service`: the trainer's `checkpoint.PreemptionWatcher`, which asks JAX's coordination service
(`multihost_utils.reached_preemption_sync_point`) at every step boundary. `allreduce`: the alternative it
replaced, kept here only to be measured against: each process's SIGTERM flag goes through a device max
over the mesh at every step, read one step later (a host fetch per step). The modes alternate within
each round; the figure is the median over rounds of the run's images/s after its first log interval.
"""

import argparse
import json
import pathlib
import runpy
import socket
import statistics
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.training import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODES = ("service", "allreduce")


class AllReduceWatcher:
  """Every process's flag through a device max at each step boundary, the result read at the next one."""

  def __init__(self, mesh=None):
    self._mesh = mesh or parallel.make_mesh()
    self._sharding = parallel.batch_sharded(self._mesh)
    self._received = threading.Event()
    self._pending = None
    self._any = jax.jit(jnp.max, out_shardings=parallel.replicated(self._mesh))

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    pass

  def stop_requested(self, step=None):
    del step
    agreed = self._pending is not None and bool(jax.device_get(self._pending))
    flags = np.full(len(self._mesh.local_devices), self._received.is_set(), np.int32)
    self._pending = self._any(jax.make_array_from_process_local_data(self._sharding, flags))
    return agreed


def child(mode: str, argv: list[str]) -> None:
  if mode == "allreduce":
    from perceiver_jax.training import checkpoint

    checkpoint.PreemptionWatcher = AllReduceWatcher
  sys.argv = ["experiments/train.py", *argv]
  runpy.run_path(str(ROOT / "experiments" / "train.py"), run_name="__main__")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_pair(mode: str, config: str, workdir: pathlib.Path) -> float:
  """Median images/s of one 2-process run after its first log interval (which holds the compile)."""
  port, procs = free_port(), []
  for i in range(2):
    flags = [f"--config={config}", f"--workdir={workdir}", "--notensorboard", "--num_processes=2"]
    flags += [f"--coordinator_address=127.0.0.1:{port}", f"--process_id={i}", "--local_device_count=1"]
    cmd = [sys.executable, __file__, f"--child={mode}", "--", *flags]
    out = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs.append(subprocess.Popen(cmd, cwd=ROOT, **out))
  errors = [p.communicate()[1] for p in procs]
  for p, err in zip(procs, errors, strict=True):
    if p.returncode:
      sys.exit(f"error: a {mode} process failed:\n{err[-2000:]}")
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  # examples_per_s; runs logged before the task-neutral name have images_per_s.
  rates = [m.get("examples_per_s", m.get("images_per_s")) for m in lines if "grad_norm" in m][1:]
  if not rates:
    sys.exit("error: the run logged examples/s once or never; give it more steps than 2 x train.log_every.")
  return statistics.median(rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  local = "runlocal,num_steps=400,log_every=50,eval_every=400,checkpoint.every=400"
  parser.add_argument("--config", default=f"configs/digits.py:{local}")
  parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args()
  if args.child:
    child(args.child, [a for a in rest if a != "--"])
    return
  rates: dict[str, list[float]] = {m: [] for m in MODES}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for mode in MODES if r % 2 == 0 else MODES[::-1]:
        rates[mode].append(run_pair(mode, args.config, pathlib.Path(tmp) / f"{mode}{r}"))
  medians = {m: statistics.median(v) for m, v in rates.items()}
  out = {"config": args.config, "rounds": args.rounds, "examples_per_s": rates}
  out |= {f"median_{m}": round(v, 1) for m, v in medians.items()}
  out["service_over_allreduce"] = round(medians["service"] / medians["allreduce"], 3)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
