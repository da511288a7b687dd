"""Converts one of DeepMind's released Perceiver IO ImageNet checkpoints into a run directory.

    python scripts/convert_official_checkpoint.py \
      --checkpoint=imagenet_fourier_position_encoding.pystate --workdir=W

writes W/config.json (configs/imagenet.py:io_<kind>, with the model and input read from the checkpoint and
the colab's normalisation in `augment.normalize_mean/std`) and W/checkpoints/0 (orbax: the converted
parameters, BatchNorm statistics for the conv network, a fresh optimizer state). Then

    python experiments/evaluate.py --workdir=W --config.dataset.data_dir=DATA_DIR
    python experiments/train.py --config=configs/imagenet.py:io_fourier --config.train.init_from=W ...

evaluate it on ImageNet's validation split and fine-tune from it. The file is read without running anything
from it (perceiver_jax.pretrained); the keywords `--num_blocks`, `--num_self_heads`, `--num_cross_heads` and
`--image_size` are what its shapes cannot tell (the released networks': 8, 8, 1, 224).
"""

import json
import pathlib

import jax
import ml_collections
from absl import flags
from etils import epath

from perceiver_jax import cli, config_args, pretrained
from perceiver_jax.training import checkpoint, optim, run_files, train

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The downloaded .pystate file.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory to write (new or empty).", required=True)
_CONFIG = flags.DEFINE_string(
  "config",
  None,
  "Config file[:variants] whose recipe and dataset the run gets (default: configs/imagenet.py:io_<kind>); "
  "its model and input are replaced by the checkpoint's.",
)
_NUM_BLOCKS = flags.DEFINE_integer("num_blocks", 8, "Repeats of the weight-shared latent Transformer.")
_NUM_SELF_HEADS = flags.DEFINE_integer("num_self_heads", 8, "Self-attention heads.")
_NUM_CROSS_HEADS = flags.DEFINE_integer("num_cross_heads", 1, "Encoder cross-attention heads.")
_IMAGE_SIZE = flags.DEFINE_integer(
  "image_size", None, "Training image side (default 224; learned: its table)."
)

_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def convert(checkpoint_path: str, workdir: str, config_spec: str | None = None, **shape_args) -> dict:
  """Writes the run directory; returns a summary (kind, parameters, workdir)."""
  root = epath.Path(workdir)
  if (root / run_files.CONFIG).exists() or checkpoint.directory(workdir).exists():
    raise FileExistsError(f"{workdir} already holds a run; pass a new --workdir.")
  loaded, params, state = pretrained.load_official(checkpoint_path, **shape_args)
  kind = loaded.pretrained_kind
  config = config_args.load(config_spec or str(_CONFIGS / f"imagenet.py:io_{kind}"))
  config.model.update(loaded.model.to_dict())
  config.input = ml_collections.ConfigDict(loaded.input.to_dict())
  config.dataset.update(image_size=loaded.dataset.image_size, num_classes=loaded.dataset.num_classes)
  config.pretrained = dict(checkpoint=epath.Path(checkpoint_path).name, kind=kind)
  optimizer, _ = optim.make_optimizer(config, 1, 1)  # Its state's structure does not depend on the schedule.
  train_state = train.TrainState(
    params,
    state,
    optimizer.init(params),
    jax.numpy.zeros([], jax.numpy.int32),
    jax.random.PRNGKey(config.seed),
  )
  root.mkdir(parents=True, exist_ok=True)
  run_files.write_json(root / run_files.CONFIG, json.loads(config.to_json_best_effort()))
  manager = checkpoint.make_manager(workdir)
  try:
    checkpoint.save(manager, 0, train_state)
  finally:
    manager.close()
  return {
    "kind": kind,
    "network": pretrained.KINDS[kind],
    "params": train.count_params(params),
    "workdir": workdir,
  }


def main(argv):
  del argv
  summary = convert(
    _CHECKPOINT.value,
    _WORKDIR.value,
    _CONFIG.value,
    num_blocks=_NUM_BLOCKS.value,
    num_self_heads=_NUM_SELF_HEADS.value,
    num_cross_heads=_NUM_CROSS_HEADS.value,
    image_size=_IMAGE_SIZE.value,
  )
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  cli.run(main)
