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

from perceiver_jax import config_args

common = config_args.sibling(__file__, "common")

# Train steps per run of the miniature Table 4 (`reproduce`): 3 seeds x 7 rows in 30 minutes on 2 cores.
REPRODUCE_STEPS = 200
GRID = (16, 16)  # 256 points: every ViT patch size of Table 4 (2, 4, 8, 16) divides it.
TRANSFORMER_SIDE = 15  # 225 of the 256 points, as the paper's 44 x 44 takes 1,936 of 2,048.


def get_config(arg: str | None = None):
  c = common.base("single_label")
  c.model = common.perceiver(num_classes=10, size="small")
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
  c.optimizer = common.optimizer(warmup_steps=50)
  c.train = common.train(
    global_batch_size=64, num_steps=800, log_every=50, eval_every=200, eval_batch_size=250
  )
  c.checkpoint = common.checkpoint(every=400, keep=2)

  def reproduce(c):
    c.train.update(
      num_steps=REPRODUCE_STEPS, eval_every=REPRODUCE_STEPS // 2, log_every=REPRODUCE_STEPS // 10
    )
    c.optimizer.warmup_steps = REPRODUCE_STEPS // 20
    c.checkpoint.every = REPRODUCE_STEPS

  variants = {
    "runlocal": lambda c: common.runlocal_steps(c, checkpoint_every=30),
    "reproduce": reproduce,
    # Table 4's rows at this scale (configs/common.py's "small"; configs/modelnet40.py: the paper's).
    **common.grid_baselines(GRID, TRANSFORMER_SIDE, "small", words={}),
  }
  return config_args.apply_arg(c, arg, variants)
