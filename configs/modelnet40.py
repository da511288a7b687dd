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

import importlib.util
import pathlib

import ml_collections

from perceiver_jax import config_args

GRID = (32, 64)
TRANSFORMER_SIDE = 44


def _shapes_config():
  """configs/shapes.py, for its Table 4 baseline words (one definition for both scales)."""
  spec = importlib.util.spec_from_file_location(
    "configs_shapes", pathlib.Path(__file__).with_name("shapes.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "single_label"  # One class per cloud.
  c.model_name = "perceiver"
  c.model = dict(
    num_classes=40,
    num_latents=512,
    latent_channels=1024,
    num_latent_transformers=2,
    num_cross_attends=2,
    num_self_attends_per_block=6,
    num_cross_heads=1,
    num_self_heads=8,
    cross_qk_channels=None,  # None: the input's channels (387), as on ImageNet.
    widening_factor=1,
    dropout_rate=0.0,
    share_cross_attends=True,
    share_latent_transformers=True,
    cross_attend_layout="interleaved",
    attention_impl="xla",
    cross_attention_chunk_size=None,
    scan_repeats=True,
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
    data_dir=ml_collections.config_dict.placeholder(str),
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
  c.optimizer = dict(
    name="lamb",
    learning_rate=1e-3,
    schedule="constant",
    warmup_steps=0,
    decay_epochs=(),
    decay_factor=0.1,
    constant_fraction=0.5,
    weight_decay=0.1,
    clip_global_norm=10.0,
    b1=0.9,
    b2=0.999,
  )
  c.train = dict(
    global_batch_size=512,
    num_steps=50_000,
    num_epochs=None,
    label_smoothing=0.1,
    log_every=100,
    profile_steps=0,
    eval_every=2500,
    eval_batch_size=512,
    # A run directory whose parameters the run starts from (configs/imagenet.py).
    init_from=ml_collections.config_dict.placeholder(str),
  )
  c.checkpoint = dict(every=2500, keep=3)
  c.precision = "float32"
  c = ml_collections.ConfigDict(c)
  local = "runlocal" in config_args.parse_arg(arg)[0]
  shapes = _shapes_config()

  def runlocal(c):
    c.model.update(
      num_latents=16,
      latent_channels=32,
      num_self_attends_per_block=1,
      num_self_heads=2,
      scan_blocks=False,
      remat=False,
    )
    c.input.num_bands = 4
    c.train.update(global_batch_size=8, num_steps=6, log_every=2, eval_every=6, eval_batch_size=8)
    c.checkpoint.every = 3

  baselines = shapes.baselines(GRID, TRANSFORMER_SIDE, small=local)
  if local:  # The same words at runlocal size (the small baselines' words are resnet, vit2, ...).
    baselines = {
      "resnet50": baselines["resnet"],
      **{f"vit_b{p}": baselines[f"vit{p}"] for p in (2, 4, 8, 16)},
      "transformer44": baselines["transformer"],
    }
  return config_args.apply_arg(c, arg, {"runlocal": runlocal, **baselines})
