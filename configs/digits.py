"""The embedded default: a Perceiver (FF) on scikit-learn's digits (1,797 real 8x8 images).

Sized for a 2-core CPU: 80/20 split fixed by `dataset.split_seed`, pixels scaled to [0, 1], 4 Fourier
bands (19 channels per token), 32 x 64 latents, 2 cross-attends each followed by 2 shared self-attention
blocks, AdamW with warmup and cosine decay (the paper's LAMB recipe is for ImageNet-sized batches and
stalls at this batch size). Variants: `permuted` (one fixed pixel permutation), `permuted_random` (a new
one per example), `learned_pos`, `unshared`, `runlocal` (a few steps, for tests), and key=value overrides.
"""

from perceiver_jax import config_args

common = config_args.sibling(__file__, "common")

# Train steps per run of the miniature reproduction (the `reproduce` variant); see `_with_baselines`.
REPRODUCE_STEPS = 240


def get_config(arg: str | None = None):
  c = common.base()
  c.model = common.perceiver(num_classes=10, size="small")
  c.input = common.image_input(num_bands=4, max_resolution=8)
  c.dataset = dict(
    name="digits",
    data_dir=common.placeholder(str),
    image_size=8,
    num_channels=1,
    inputs=None,  # None: images [image_size, image_size, num_channels]; else data.spec's description.
    num_classes=10,
    train_split="train",
    eval_split="test",
    test_fraction=0.2,
    split_seed=0,
    num_train_examples=None,  # None: the split's size.
  )
  c.optimizer = common.optimizer()
  c.train = common.train(global_batch_size=64, num_steps=1000, eval_every=500, eval_batch_size=256)
  c.checkpoint = common.checkpoint(every=500)

  variants = {
    "permuted": lambda c: setattr(c.input, "permutation", "fixed"),
    "permuted_random": lambda c: setattr(c.input, "permutation", "random"),
    # Table 2's learned-position row, as in configs/imagenet.py: a learned encoding, a single cross-attend.
    "learned_pos": lambda c: (
      setattr(c.input, "position_encoding", "learned"),
      setattr(c.model, "num_cross_attends", 1),
    ),
    # As in configs/imagenet.py (its keys in chunks of 4,096 to fit a v5e chip): here one chunk, a no-op.
    "unshared": lambda c: (
      setattr(c.model, "share_cross_attends", False),
      setattr(c.model, "share_latent_transformers", False),
      setattr(c.model, "cross_attention_chunk_size", 4096),
    ),
    "runlocal": common.runlocal_steps,
  }
  return config_args.apply_arg(c, arg, _with_baselines(variants))


def _with_baselines(variants: dict) -> dict:
  """Adds Table 2 at digits scale (`resnet`, `vit`, `transformer`) and the `reproduce` step budget.

  Each baseline word sets `model_name` and replaces `model` wholesale; the recipe stays the Perceiver's.
  `runlocal` leaves models alone, so the words combine in any order.
  """

  def resnet(c):
    common.baseline(c, "resnet", "small")  # A ResNet-10 shape (configs/common.py).

  def vit(c):
    # 2x2 patches: 16 patches of 4 pixels, the 8x8 analogue of 16x16 patches of a 224x224 image (196).
    # Sized to the Perceiver's 9.2 MFLOPs per image: 2 blocks of width 96 over 17 tokens, 8.0 MFLOPs.
    common.baseline(c, "vit", "small", patch_size=2)

  def transformer(c):
    # Self-attention over all 64 pixels (nothing to resize at 8x8), sized like the paper's to the
    # Perceiver's compute (configs/common.py: 8.7 MFLOPs per image, 8.8 with embedding and head).
    common.baseline(c, "transformer", "small")

  def reproduce(c):
    # The miniature Table 2 (`perceiver_jax.tools.reproduce`): 45 runs in 30 minutes on 2 CPU cores, so about
    # 40 s a run, half of it compiling. Batches of 32 learn more per example than 64 at this size.
    c.train.global_batch_size = 32
    c.train.num_steps = REPRODUCE_STEPS
    c.train.eval_every = REPRODUCE_STEPS // 4
    c.train.log_every = REPRODUCE_STEPS // 12
    c.optimizer.warmup_steps = REPRODUCE_STEPS // 20
    c.checkpoint.every = REPRODUCE_STEPS

  return {**variants, "resnet": resnet, "vit": vit, "transformer": transformer, "reproduce": reproduce}
