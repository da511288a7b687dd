"""The embedded point-cloud default: a Perceiver on `shapes`, ten synthetic 3-D shape classes (no download).

`perceiver_jax.data.shapes`: sphere, ellipsoid, cube, slab, cylinder, capsule, cone, pyramid, torus, ring,
256 surface points each in a random pose, size, stretch and place, with noise; 8,000 train and 500 test
clouds. The paper's ModelNet40 preprocessing (zero-centre; in training per-point scales in [0.99, 1.01],
then zero-mean and unit-cube normalisation). The model is configs/modelnet40.py's at digits size: 32 x 64
latents, 2 cross-attends, 2 latent Transformers of 2 blocks; 8 Fourier bands per axis up to frequency 16
(`max_resolution=32`, 51 channels per point; 16 bands up to 32 overfit 2,000 clouds: 57% test at 90%
train); AdamW with warmup and cosine decay, batch 64.

Variants: the rows of Table 4 at this scale, the points laid in a 16 x 16 grid in one random order per
run (`permutation_seed`) with the same Fourier features as the grid's channels: `resnet` (a ResNet-10
shape), `vit2`, `vit4`, `vit8`, `vit16` (ViTs on 2, 4, 8 and 16-point square patches), `transformer`
(self-attention over a 15 x 15 grid: 225 of the 256 points, as the paper's 44 x 44 takes 1,936 of
2,048); `reproduce` (the miniature suite's step budget), `runlocal` (a few steps, for tests).
"""

import ml_collections

from perceiver_jax import config_args

# Train steps per run of the miniature Table 4 (`reproduce`): 3 seeds x 7 rows in 30 minutes on 2 cores.
REPRODUCE_STEPS = 200
GRID = (16, 16)  # 256 points: every ViT patch size of Table 4 (2, 4, 8, 16) divides it.
TRANSFORMER_SIDE = 15  # 225 of the 256 points, as the paper's 44 x 44 takes 1,936 of 2,048.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "single_label"  # One class per cloud.
  c.model_name = "perceiver"
  c.model = dict(
    num_classes=10,
    num_latents=32,
    latent_channels=64,
    num_latent_transformers=2,
    num_cross_attends=2,
    num_self_attends_per_block=2,
    num_cross_heads=1,
    num_self_heads=4,
    cross_qk_channels=None,  # None: the input's channels, as in the paper.
    widening_factor=1,
    dropout_rate=0.0,
    share_cross_attends=True,
    share_latent_transformers=True,
    cross_attend_layout="interleaved",
    attention_impl="xla",
    cross_attention_chunk_size=None,
    scan_repeats=True,
    scan_blocks=False,
    remat=False,
  )
  c.input = dict(
    front_end="points",  # front_ends.points: each point's Fourier features of its own xyz
    position_encoding="fourier",
    num_bands=8,
    max_resolution=32,  # Bands 1 .. 16 (max_resolution / 2) over the unit cube [-1, 1].
    grid_shape=None,  # (H, W): the points laid out as an image, for the grid baselines.
    permutation_seed=0,
  )
  c.dataset = dict(
    name="shapes",
    num_points=256,
    point_channels=0,
    num_classes=10,
    num_train_examples=8000,
    num_eval_examples=500,
    data_seed=0,  # The clouds themselves: the same for every run and seed.
  )
  # Per-point scales of the paper's training augmentation; no MixUp or CutMix (hard labels).
  c.augment = dict(point_scale=(0.99, 1.01), mixup_alpha=0.0, cutmix_alpha=0.0)
  c.optimizer = dict(
    name="adamw",
    learning_rate=3e-3,
    schedule="cosine",
    warmup_steps=50,
    decay_epochs=(),
    decay_factor=0.1,
    constant_fraction=0.5,
    weight_decay=0.1,
    clip_global_norm=1.0,
    b1=0.9,
    b2=0.999,
  )
  c.train = dict(
    global_batch_size=64,
    num_steps=800,
    num_epochs=None,
    label_smoothing=0.1,
    log_every=50,
    profile_steps=0,
    eval_every=200,
    eval_batch_size=250,
    # A run directory whose parameters the run starts from (configs/imagenet.py).
    init_from=ml_collections.config_dict.placeholder(str),
  )
  c.checkpoint = dict(every=400, keep=2)
  c.precision = "float32"
  c = ml_collections.ConfigDict(c)

  def runlocal(c):
    c.train.update(num_steps=30, log_every=10, eval_every=30)
    c.optimizer.warmup_steps = 5
    c.checkpoint.every = 30

  def reproduce(c):
    c.train.update(
      num_steps=REPRODUCE_STEPS, eval_every=REPRODUCE_STEPS // 2, log_every=REPRODUCE_STEPS // 10
    )
    c.optimizer.warmup_steps = REPRODUCE_STEPS // 20
    c.checkpoint.every = REPRODUCE_STEPS

  variants = {"runlocal": runlocal, "reproduce": reproduce, **baselines(GRID, TRANSFORMER_SIDE, small=True)}
  return config_args.apply_arg(c, arg, variants)


def baselines(grid, transformer_side: int, small: bool) -> dict:
  """Table 4's grid baselines as variant words, at shapes size (`small`) or the paper's.

  Each sets `model_name`, replaces `model` wholesale and lays the points in a grid (`input.grid_shape`);
  the recipe stays the Perceiver's. configs/modelnet40.py takes them at the paper's sizes (`resnet50`,
  `vit_b2`, ..., `transformer44` there; `resnet`, `vit2`, ..., `transformer` here). The Transformer takes
  the tokens of a `transformer_side` square grid (the points beyond it left out) and needs no grid shape.
  """
  side = transformer_side

  def resnet(c):
    c.model_name = "resnet"
    size = (
      dict(
        blocks_per_group=(1, 1, 1, 1),
        channels_per_group=(32, 64, 128, 256),
        bottleneck=False,
        strides=(1, 1, 2, 2),
        initial_channels=32,
        initial_kernel_shape=3,
        initial_stride=1,
      )
      if small
      else dict(
        blocks_per_group=(3, 4, 6, 3),
        channels_per_group=(256, 512, 1024, 2048),
        bottleneck=True,
        strides=(1, 2, 2, 2),
        initial_channels=64,
        initial_kernel_shape=7,
        initial_stride=2,
      )
    )
    c.model = ml_collections.ConfigDict(dict(num_classes=c.dataset.num_classes, bn_decay_rate=0.9, **size))
    c.input.grid_shape = tuple(grid)

  def vit(patch_size):
    def apply(c):
      c.model_name = "vit"
      size = (
        dict(width=96, num_layers=2, num_heads=4) if small else dict(width=768, num_layers=12, num_heads=12)
      )
      c.model = ml_collections.ConfigDict(
        dict(
          num_classes=c.dataset.num_classes,
          patch_size=patch_size,
          widening_factor=4,
          dropout_rate=0.0,
          pool="token",
          remat=False,
          attention_chunk_size=None,
          **size,
        )
      )
      c.input.grid_shape = tuple(grid)

    return apply

  def transformer(c):
    c.model_name = "transformer"
    size = dict(width=48, num_layers=2, num_heads=4) if small else dict(width=512, num_layers=12, num_heads=8)
    c.model = ml_collections.ConfigDict(
      dict(
        num_classes=c.dataset.num_classes,
        widening_factor=4,
        dropout_rate=0.0,
        remat=not small,
        attention_chunk_size=None,
        **size,
      )
    )
    c.input.grid_shape = (side, side)

  if small:
    return {
      "resnet": resnet,
      **{f"vit{p}": vit(p) for p in (2, 4, 8, 16)},
      "transformer": transformer,
    }
  return {
    "resnet50": resnet,
    **{f"vit_b{p}": vit(p) for p in (2, 4, 8, 16)},
    f"transformer{side}": transformer,
  }
