"""Trains and evaluates a config: `python experiments/train.py [--config=...] [--workdir=...]`.

With no flags it trains the embedded default (configs/digits.py) into ./workdirs/digits.
`--config=configs/imagenet.py:permuted,runlocal` picks a config file and its variants, and
`--config.train.num_steps=100` overrides any field.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from perceiver_jax import train

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file[:variants].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<dataset name>).")


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("workdirs", config.dataset.name)
  results = train.train_and_evaluate(config, workdir)
  logging.info("Results in %s: %s", workdir, results["eval"])
  print(
    f"eval top1 {results['eval']['top1']:.4f} top5 {results['eval']['top5']:.4f} "
    f"after {results['step']} steps ({results['train_seconds']:.0f} s); results in {workdir}/results.json"
  )


if __name__ == "__main__":
  app.run(main)
