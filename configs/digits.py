"""The embedded default: a Perceiver (FF) on scikit-learn's digits (1,797 real 8x8 images).

Sized for a 2-core CPU: 80/20 split fixed by `dataset.split_seed`, pixels scaled to [0, 1], 4 Fourier
bands (19 channels per token), 32 x 64 latents, 2 cross-attends each followed by 2 shared self-attention
blocks, AdamW with warmup and cosine decay (the paper's LAMB recipe is for ImageNet-sized batches and
stalls at this batch size). Variants: `permuted` (one fixed pixel permutation), `permuted_random` (a new
one per example), `learned_pos`, `unshared`, `runlocal` (a few steps, for tests), and key=value overrides.
"""

import ml_collections

from perceiver_jax import config_args

# Train steps per run of the miniature reproduction (the `reproduce` variant); see `_with_baselines`.
REPRODUCE_STEPS = 240


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_name = "perceiver"
  # data.spec.TASKS: "single_label" (softmax, top-1/top-5) or "multi_label" (per-class sigmoid, mAP).
  c.task = "single_label"
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
    # Speed and memory switches (docs/performance.md); none changes the function or the parameters.
    attention_impl="xla",  # or "jax": jax.nn.dot_product_attention (cuDNN's fused kernel on GPU)
    cross_attention_chunk_size=None,  # e.g. 4096: cross-attention memory O(N x chunk), not O(N x M)
    scan_repeats=True,  # the repeats compiled once (one block per distinct block), shared or not
    scan_blocks=False,  # True: a latent Transformer's blocks compiled once (a scan over their weights)
    remat=False,  # True: recompute each block in the backward pass (less memory, more compute)
  )
  c.input = dict(
    front_end="image",  # front_ends.FRONT_ENDS: what turns the batches' `inputs` into tokens
    position_encoding="fourier",
    num_bands=4,
    max_resolution=8,
    learned_pos_channels=128,
    permutation="none",
    permutation_seed=0,
  )
  c.dataset = dict(
    name="digits",
    data_dir=ml_collections.config_dict.placeholder(str),
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
  c.optimizer = dict(
    name="adamw",
    learning_rate=3e-3,
    schedule="cosine",
    warmup_steps=100,
    decay_epochs=(),
    decay_factor=0.1,
    constant_fraction=0.5,  # Only for schedule "constant_cosine": the flat share of the steps.
    weight_decay=0.1,
    clip_global_norm=1.0,
    b1=0.9,
    b2=0.999,
  )
  c.train = dict(
    global_batch_size=64,
    num_steps=1000,
    num_epochs=None,
    label_smoothing=0.1,
    log_every=100,
    # Steps to trace with jax.profiler after the first compile, into the workdir (0: off).
    profile_steps=0,
    eval_every=500,
    eval_batch_size=256,
    # A run directory whose parameters the run starts from (configs/imagenet.py).
    init_from=ml_collections.config_dict.placeholder(str),
  )
  c.checkpoint = dict(every=500, keep=3)
  c.precision = "float32"
  c = ml_collections.ConfigDict(c)

  def runlocal(c):
    c.train.num_steps = 30
    c.train.log_every = 10
    c.train.eval_every = 30
    c.optimizer.warmup_steps = 5
    c.checkpoint.every = 20

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
    "runlocal": runlocal,
  }
  return config_args.apply_arg(c, arg, _with_baselines(variants))


def _with_baselines(variants: dict) -> dict:
  """Adds Table 2 at digits scale (`resnet`, `vit`, `transformer`) and the `reproduce` step budget.

  Each baseline word sets `model_name` and replaces `model` wholesale; the recipe stays the Perceiver's.
  `runlocal` leaves models alone, so the words combine in any order.
  """

  def resnet(c):
    # A ResNet-10 shape: one basic block per group. The 3x3 stride-1 stem keeps the 8x8 grid, Haiku's
    # max-pool halves it, and the groups take it 4x4 -> 4x4 -> 2x2 -> 1x1.
    c.model_name = "resnet"
    c.model = ml_collections.ConfigDict(
      dict(
        num_classes=c.dataset.num_classes,
        blocks_per_group=(1, 1, 1, 1),
        channels_per_group=(32, 64, 128, 256),
        bottleneck=False,
        strides=(1, 1, 2, 2),
        initial_channels=32,
        initial_kernel_shape=3,
        initial_stride=1,
        bn_decay_rate=0.9,
      )
    )

  def vit(c):
    # 2x2 patches: 16 patches of 4 pixels, the 8x8 analogue of 16x16 patches of a 224x224 image (196).
    # Sized to the Perceiver's 9.2 MFLOPs per image: 2 blocks of width 96 over 17 tokens, 8.0 MFLOPs.
    # Two wide blocks learn more in a few hundred steps than four narrow ones (77-91% vs 58-69%).
    c.model_name = "vit"
    c.model = ml_collections.ConfigDict(
      dict(
        num_classes=c.dataset.num_classes,
        patch_size=2,
        width=96,
        num_layers=2,
        num_heads=4,
        widening_factor=4,
        dropout_rate=0.0,
        pool="token",
        remat=False,
        attention_chunk_size=None,
      )
    )

  def transformer(c):
    # Self-attention over all 64 pixels (nothing to resize at 8x8), sized like the paper's to the
    # Perceiver's compute: 2 blocks of width 48 cost 2 * (24 * 64 * 48^2 + 4 * 64^2 * 48) = 8.7 MFLOPs
    # per image (8.8 with embedding and head), the Perceiver 9.2. At 4 blocks of width 32 (8.5 MFLOPs)
    # one seed in three stayed at chance for 240 steps.
    c.model_name = "transformer"
    c.model = ml_collections.ConfigDict(
      dict(
        num_classes=c.dataset.num_classes,
        width=48,
        num_layers=2,
        num_heads=4,
        widening_factor=4,
        dropout_rate=0.0,
        remat=False,
        attention_chunk_size=None,
      )
    )

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
