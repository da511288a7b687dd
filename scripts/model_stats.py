"""Prints a config's parameter count and forward GFLOPs per example as one JSON line; runs nothing.

  python scripts/model_stats.py --config=configs/imagenet.py[:variants]

GFLOPs follow the paper: 2 x multiply-adds of the matrix products, every layer counted each time it runs.
"""

import json

from perceiver_jax import cli
from perceiver_jax.tools import flops

_CONFIG = cli.define_config_file("config", None, "Config file[:variants].")


def main(argv):
  del argv
  config = _CONFIG.value
  stats = flops.model_stats(config)
  print(
    json.dumps(
      {
        "config_arg": config.get("config_arg", ""),
        "model_name": config.model_name,
        "params": stats["params"],
        "params_m": round(stats["params"] / 1e6, 1),
        "gflops": round(stats["gflops"], 1),
      }
    )
  )


if __name__ == "__main__":
  cli.run(main)
