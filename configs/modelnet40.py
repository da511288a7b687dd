"""The paper's Perceiver on ModelNet40 (Table 4), from the TFDS dataset scripts/prepare_modelnet40.py builds.

Paper (Jaegle et al. 2021, Sec. 4.3 and App.): 2,048 xyz points per object (PointNet's sampling, or our
2,048 area-weighted surface samples of each mesh), zero-centred; in training random per-point scaling in
[0.99, 1.01], then zero-mean and unit-cube normalisation (`perceiver_jax.data.points`). Each point's 64
Fourier bands per axis at maximum frequency 1120, ten times ImageNet's 112 (= 224 / 2): bands run from 1
to `max_resolution / 2` here, so `max_resolution=2240`; 3 x 129 = 387 channels per point. Model: 2
cross-attends each followed by a latent Transformer of 6 self-attention blocks, otherwise ImageNet's
sizes (512 x 1024 latents, 1 cross head, 8 self heads, first cross-attend unshared, the rest and the
latent Transformers shared). Our reading: "2 cross-attention and 6 self-attention layers for each block"
is 2 blocks (`num_latent_transformers=2`); `num_latent_transformers=8` gives ImageNet's 48 self-attends
with the 2 cross-attends interleaved. LAMB at a constant 1e-3, batch 512, 50,000 steps (the paper: it
saturates within them). Weight decay, clipping, label smoothing: configs/imagenet.py's (official code).

Variants: Table 4's baselines, fed the points "arranged randomly in a 2-D grid" (one order per run,
`input.permutation_seed`) with the coordinates' Fourier features as the grid's channels: `resnet50`,
`vit_b2`, `vit_b4`, `vit_b8`, `vit_b16` on a 32 x 64 grid (all 2,048 points; every patch size divides it),
`transformer44` (ImageNet's Transformer over a 44 x 44 grid: 1,936 of the 2,048 points); `runlocal` (a
tiny model and batch on the same code path), and key=value overrides.
"""

import ml_collections

from perceiver_jax import config_args

common = config_args.sibling(__file__, "common")

GRID = (32, 64)
TRANSFORMER_SIDE = 44
# The config's words for Table 4's rows (configs/shapes.py calls them resnet, vit2, ..., transformer).
WORDS = {
  "resnet": "resnet50",
  **{f"vit{p}": f"vit_b{p}" for p in (2, 4, 8, 16)},
  "transformer": f"transformer{TRANSFORMER_SIDE}",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base("single_label")
  # ImageNet's model with 2 cross-attends, each followed by a latent Transformer of 6 blocks.
  c.model = common.perceiver(
    num_classes=40,
    size="paper",
    num_latent_transformers=2,
    num_cross_attends=2,
    scan_blocks=True,
    remat=True,
  )
  c.input = dict(
    front_end="points",
    position_encoding="fourier",
    num_bands=64,
    max_resolution=2240,  # Maximum frequency 1120: ten times ImageNet's 224 / 2.
    grid_shape=None,
    permutation_seed=0,
  )
  c.dataset = dict(
    name="modelnet40",
    data_dir=common.placeholder(str),
    num_points=2048,
    point_channels=0,  # 3: the normals too (if prepared with them); the paper uses xyz only.
    num_classes=40,
    train_split="train",
    eval_split="test",
    # None: the prepared split's size (the meshes: 9,843; PointNet's HDF5 files: 9,840), for epoch counts.
    num_train_examples=None,
  )
  # Per-point scales of the paper's training augmentation; no MixUp or CutMix (hard labels).
  c.augment = dict(point_scale=(0.99, 1.01), mixup_alpha=0.0, cutmix_alpha=0.0)
  c.optimizer = common.optimizer(**common.LAMB, learning_rate=1e-3, schedule="constant", warmup_steps=0)
  c.train = common.train(global_batch_size=512, num_steps=50_000, eval_every=2500, eval_batch_size=512)
  c.checkpoint = common.checkpoint(every=2500)
  local = "runlocal" in config_args.parse_arg(arg)[0]

  def runlocal(c):
    common.tiny_perceiver(c)
    c.model.scan_blocks = False
    common.tiny_steps(c)

  # At runlocal the baselines have configs/shapes.py's sizes ("small"), under this config's words.
  baselines = common.grid_baselines(GRID, TRANSFORMER_SIDE, "small" if local else "paper", words=WORDS)
  return config_args.apply_arg(c, arg, {"runlocal": runlocal, **baselines})
