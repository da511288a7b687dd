r"""Races this codebase's train step against the peer implementations of ../shared/bench, in one run.

Every implementation runs in rounds, each run right after the machine's f32 matmul ceiling is measured
(`matmul_peak.py`), so each figure is compared with a ceiling taken in the same minute. Prints a
Markdown table of medians over the rounds and writes every raw JSON line to --out.

  python scripts/compare_peers.py --rounds=3 --out=/tmp/peers.jsonl
  python scripts/compare_peers.py --ours=configs/benchmark.py --ours=configs/benchmark.py:bfloat16

The peers run in their own virtual environment (--peers_python; see ../shared/bench/README.md).
Their MFU is their achieved GFLOP/s (matmul FLOPs counted by torch) over the ceiling; ours is model
FLOPs (5.137 GFLOPs per trained bench-small image) over the same ceiling, and also over the matmul that
scripts/benchmark.py times after every step of its own ("own probe").
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys

from absl import flags

from perceiver_jax import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds over every implementation.")
_BENCH_DIR = flags.DEFINE_string(
  "bench_dir", os.path.join(_ROOT, "..", "shared", "bench"), "Folder of matmul_peak.py and peer_*.py."
)
_PEERS_PYTHON = flags.DEFINE_string(
  "peers_python", os.path.join(_ROOT, "..", "peers-venv", "bin", "python"), "Python of the peers' venv."
)
_PEERS = flags.DEFINE_list("peers", ["peer_perceiver_pytorch.py", "peer_hf_perceiver.py"], "Peer scripts.")
_OURS = flags.DEFINE_multi_string(
  "ours", ["configs/benchmark.py"], "scripts/benchmark.py's config argument and any flags, one run each."
)
_OUT = flags.DEFINE_string("out", None, "Where to append the raw JSON lines (one per run).")


def _last_json(command: list[str]) -> dict:
  result = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, check=False)
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode or not lines:
    raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return json.loads(lines[-1])


def main(argv: list[str]) -> None:
  del argv
  if not os.path.exists(_PEERS_PYTHON.value):
    raise SystemExit(
      f"No peers' Python at {_PEERS_PYTHON.value}: create it as ../shared/bench/README.md says, or pass "
      "--peers_python."
    )
  peak = [_PEERS_PYTHON.value, os.path.join(_BENCH_DIR.value, "matmul_peak.py")]
  runs = [(name, [_PEERS_PYTHON.value, os.path.join(_BENCH_DIR.value, name)]) for name in _PEERS.value]
  for arg in _OURS.value:  # A config argument, then any flags: "configs/benchmark.py --config.x=y".
    config, *more = shlex.split(arg)
    command = [sys.executable, "scripts/benchmark.py", f"--config={config}", *more]
    runs.append((f"perceiver_jax {arg}", command))
  rows: dict[str, list[dict]] = {name: [] for name, _ in runs}
  for round_ in range(_ROUNDS.value):
    for name, command in runs:
      ceiling = _last_json(peak)["peak_gflops"]
      result = _last_json(command)
      if "achieved_gflops" in result:  # A peer: its own matmul FLOPs.
        achieved = result["achieved_gflops"]
      else:  # Ours: model FLOPs.
        achieved = result["achieved_model_gflops"]
      record = dict(result, name=name, round=round_, ceiling_gflops=ceiling, achieved=achieved)
      # Ours says examples_per_s; the peers' scripts say images_per_s.
      record["rate"] = result.get("examples_per_s", result.get("images_per_s"))
      record["mfu_vs_ceiling"] = achieved / ceiling
      rows[name].append(record)
      print(json.dumps(record), file=sys.stderr, flush=True)
      if _OUT.value:
        with open(_OUT.value, "a") as f:
          f.write(json.dumps(record) + "\n")

  def median(name, key):
    values = [r[key] for r in rows[name] if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")

  print(f"{_ROUNDS.value} rounds, medians; ceiling: torch's best f32 square matmul, right before each run.")
  print("| implementation | images/s | achieved GFLOP/s | ceiling GFLOP/s | MFU | range | MFU, own probe |")
  print("|---|---|---|---|---|---|---|")
  for name, _ in runs:
    mfus = [r["mfu_vs_ceiling"] for r in rows[name]]
    own = median(name, "mfu")
    print(
      f"| {name} | {median(name, 'rate'):.2f} | {median(name, 'achieved'):.1f} | "
      f"{median(name, 'ceiling_gflops'):.1f} | {statistics.median(mfus):.3f} | "
      f"{min(mfus):.3f}-{max(mfus):.3f} | {'-' if own != own else f'{own:.3f}'} |"
    )


if __name__ == "__main__":
  cli.run(main)
