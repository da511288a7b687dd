"""What every experiment config shares, written once: each config in configs/ states only its differences.

Not a config itself (no `get_config`): the experiment configs load it with `config_args.sibling(__file__,
"common")`. It holds
- `base(...)`: the top-level fields (seed, model_name, task, precision), to which a config adds its sections
  (`c.model = common.perceiver(...)`, `c.dataset = dict(...)`, ...);
- `perceiver(...)`: the Perceiver's `model` section at a size (`PERCEIVER_SIZES`), its switches at their
  defaults; `image_input(...)`: an image config's `input` section;
- `optimizer(...)`, `train(...)`, `checkpoint(...)`: the recipe's sections, their defaults the small
  AdamW recipe of the embedded configs (digits, shapes, sounds); `LAMB` the paper's optimizer fields;
- `baseline(...)` and `grid_baselines(...)`: the baselines of Tables 1, 2 and 4 (ResNet, ViT, Transformer)
  at three sizes (`BASELINE_SIZES`: "paper", "small" for the 2-core embedded configs, "tiny" for runlocal);
- `runlocal_steps(...)` and `tiny_perceiver(...)`, `tiny_steps(...)`: the `runlocal` words' shared parts.
"""

from __future__ import annotations

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def base(task: str = "single_label") -> ml_collections.ConfigDict:
  """A config's top level: seed 0, a Perceiver, `task`, float32; the config adds its sections."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_name = "perceiver"
  # data.spec.TASKS: "single_label" (softmax, top-1/top-5) or "multi_label" (per-class sigmoid, mAP).
  c.task = task
  c.precision = "float32"
  return c


# The Perceiver's sizes: "paper" is the ImageNet model (configs/imagenet.py), "small" the embedded configs'
# (digits, shapes, sounds: sized for a 2-core CPU).
PERCEIVER_SIZES = {
  "paper": dict(
    num_latents=512,
    latent_channels=1024,
    num_latent_transformers=8,
    num_cross_attends=8,
    num_self_attends_per_block=6,
    num_self_heads=8,
  ),
  "small": dict(
    num_latents=32,
    latent_channels=64,
    num_latent_transformers=2,
    num_cross_attends=2,
    num_self_attends_per_block=2,
    num_self_heads=4,
  ),
}


def perceiver(num_classes: int, size: str | None = None, **changes) -> dict:
  """The Perceiver's `model` section: `size`'s sizes (else all given in `changes`), the paper's structure.

  `changes` set any other field (sizes, sharing, the speed switches).
  """
  sizes = dict(PERCEIVER_SIZES[size]) if size else {}
  sizes.update({k: changes.pop(k) for k in list(changes) if k in PERCEIVER_SIZES["paper"]})
  missing = sorted(set(PERCEIVER_SIZES["paper"]) - set(sizes))
  if missing:
    raise ValueError(f"configs/common.py: perceiver() needs a size or {', '.join(missing)}.")
  num_latents, latent_channels = sizes["num_latents"], sizes["latent_channels"]
  num_latent_transformers, num_cross_attends = sizes["num_latent_transformers"], sizes["num_cross_attends"]
  num_self_attends_per_block, num_self_heads = sizes["num_self_attends_per_block"], sizes["num_self_heads"]
  model = dict(
    num_classes=num_classes,
    num_latents=num_latents,
    latent_channels=latent_channels,
    num_latent_transformers=num_latent_transformers,
    num_cross_attends=num_cross_attends,
    num_self_attends_per_block=num_self_attends_per_block,
    num_cross_heads=1,
    num_self_heads=num_self_heads,
    cross_qk_channels=None,  # None: the input's channels, as in the paper.
    widening_factor=1,
    dropout_rate=0.0,
    share_cross_attends=True,  # The first cross-attend its own, the rest shared (the paper's).
    share_latent_transformers=True,
    cross_attend_layout="interleaved",
    # Speed and memory switches (docs/performance.md); none changes the function or the parameters.
    attention_impl="xla",  # or "jax": jax.nn.dot_product_attention (cuDNN's fused kernel on GPU)
    cross_attention_chunk_size=None,  # e.g. 4096: cross-attention memory O(N x chunk), not O(N x M)
    scan_repeats=True,  # the repeats compiled once (one block per distinct block), shared or not
    scan_blocks=False,  # True: a latent Transformer's blocks compiled once (a scan over their weights)
    remat=False,  # True: recompute each block in the backward pass (less memory, more compute)
  )
  _update(model, changes, "model")
  return model


# The paper's optimizer (LAMB, clipping at 10; the rest as `optimizer`'s defaults): configs/imagenet.py.
LAMB = dict(name="lamb", clip_global_norm=10.0)


def image_input(num_bands: int, max_resolution: int) -> dict:
  """The `input` section of an image config: pixels + Fourier features (`front_ends/image.py`)."""
  return dict(
    front_end="image",  # front_ends.FRONT_ENDS: what turns the batches' `inputs` into tokens
    position_encoding="fourier",
    num_bands=num_bands,
    max_resolution=max_resolution,
    learned_pos_channels=128,
    permutation="none",
    permutation_seed=0,
  )


def optimizer(**changes) -> dict:
  """The `optimizer` section: AdamW at 3e-3, 100 warmup steps then cosine decay, unless `changes` say."""
  section = dict(
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
  _update(section, changes, "optimizer")
  return section


def train(global_batch_size: int, eval_every: int, eval_batch_size: int, **changes) -> dict:
  """The `train` section: the batch sizes and eval cadence given; steps, smoothing, logging in `changes`."""
  section = dict(
    global_batch_size=global_batch_size,
    num_steps=None,
    num_epochs=None,
    label_smoothing=0.1,
    log_every=100,
    # Steps to trace with jax.profiler after the first compile, into the workdir (0: off).
    profile_steps=0,
    eval_every=eval_every,
    eval_batch_size=eval_batch_size,
    # A run directory whose parameters the run starts from (configs/imagenet.py's docstring).
    init_from=placeholder(str),
  )
  _update(section, changes, "train")
  return section


def checkpoint(every: int, keep: int = 3) -> dict:
  """The `checkpoint` section: a checkpoint every `every` steps, the last `keep` kept."""
  return dict(every=every, keep=keep)


def _update(section: dict, changes: dict, name: str) -> None:
  unknown = sorted(set(changes) - set(section))
  if unknown:
    raise ValueError(
      f"configs/common.py: {name} has no field {', '.join(unknown)}; known: {', '.join(section)}."
    )
  section.update(changes)


# The `runlocal` words.


def runlocal_steps(c: ml_collections.ConfigDict, checkpoint_every: int = 20) -> None:
  """An embedded config's `runlocal`: 30 steps, a log every 10, one eval at the end, warmup 5."""
  c.train.update(num_steps=30, log_every=10, eval_every=30)
  c.optimizer.warmup_steps = 5
  c.checkpoint.every = checkpoint_every


def tiny_perceiver(c: ml_collections.ConfigDict) -> None:
  """A paper-size config's `runlocal` model: 16 x 32 latents, 1 block of 2 heads, 4 Fourier bands."""
  c.model.update(num_latents=16, latent_channels=32, num_self_attends_per_block=1, num_self_heads=2)
  c.model.remat = False  # A tiny model needs no memory saved; remat would only add CPU compile time.
  c.input.num_bands = 4


def tiny_steps(c: ml_collections.ConfigDict) -> None:
  """A paper-size config's `runlocal` loop: batches of 8, 6 steps, a checkpoint every 3, one eval."""
  c.train.update(
    global_batch_size=8, num_steps=6, num_epochs=None, log_every=2, eval_every=6, eval_batch_size=8
  )
  c.checkpoint.every = 3


# The baselines (Tables 1, 2 and 4): their constructor arguments (`models/baselines.py`) at three sizes.
# "paper": ResNet-50, ViT-B, and the Transformer of the Perceiver's compute on 64x64 images; "small": sized
# to the embedded configs' Perceiver (about 9 MFLOPs an 8x8 digit; see configs/digits.py); "tiny": runlocal.
BASELINE_SIZES = {
  "resnet": {
    "paper": dict(
      blocks_per_group=(3, 4, 6, 3),
      channels_per_group=(256, 512, 1024, 2048),
      bottleneck=True,
      strides=(1, 2, 2, 2),
      initial_channels=64,
      initial_kernel_shape=7,
      initial_stride=2,
    ),
    # A ResNet-10 shape: one basic block per group. On an 8x8 digit the 3x3 stride-1 stem keeps the grid,
    # Haiku's max-pool halves it, and the groups take it 4x4 -> 4x4 -> 2x2 -> 1x1.
    "small": dict(
      blocks_per_group=(1, 1, 1, 1),
      channels_per_group=(32, 64, 128, 256),
      bottleneck=False,
      strides=(1, 1, 2, 2),
      initial_channels=32,
      initial_kernel_shape=3,
      initial_stride=1,
    ),
    "tiny": dict(
      blocks_per_group=(1, 1, 1, 1),
      channels_per_group=(8, 16, 32, 64),
      bottleneck=False,
      strides=(1, 2, 2, 2),
      initial_channels=8,
      initial_kernel_shape=3,
      initial_stride=1,
    ),
  },
  # Two wide blocks learn more in a few hundred steps than four narrow ones (77-91% vs 58-69% on digits).
  "vit": {
    "paper": dict(width=768, num_layers=12, num_heads=12),
    "small": dict(width=96, num_layers=2, num_heads=4),
    "tiny": dict(width=32, num_layers=2, num_heads=2),
  },
  # Small: 2 blocks of width 48 over 64 digit pixels cost 2 * (24 * 64 * 48^2 + 4 * 64^2 * 48) = 8.7 MFLOPs
  # (the Perceiver's 9.2); at 4 blocks of width 32 one seed in three stayed at chance for 240 steps.
  "transformer": {
    "paper": dict(width=512, num_layers=12, num_heads=8),
    "small": dict(width=48, num_layers=2, num_heads=4),
    "tiny": dict(width=32, num_layers=2, num_heads=2),
  },
}


def baseline(c: ml_collections.ConfigDict, kind: str, size: str, **changes) -> None:
  """Makes `c` train the `kind` baseline at `size`: sets `model_name` and replaces `model` wholesale.

  The recipe (optimizer, schedule, augmentation) stays the config's, as the paper states no other. The
  paper-size Transformer recomputes every block in the backward pass (`remat`); `changes` set the rest
  (a ViT's `patch_size`, an `attention_chunk_size`).
  """
  model = dict(num_classes=c.dataset.num_classes)
  if kind == "resnet":
    model.update(BASELINE_SIZES[kind][size], bn_decay_rate=0.9)
  else:
    model.update(widening_factor=4, dropout_rate=0.0)
    if kind == "vit":
      model.update(patch_size=None, pool="token")
    model.update(BASELINE_SIZES[kind][size], remat=kind == "transformer" and size == "paper")
    model.update(attention_chunk_size=None)
  _update(model, changes, kind)
  c.model_name = kind
  c.model = ml_collections.ConfigDict(model)


def grid_baselines(grid: tuple[int, int], transformer_side: int, size: str, words: dict[str, str]) -> dict:
  """Table 4's baselines over points laid in a grid, as variant words (`words`: the word of each row).

  `words` maps "resnet", "vit2" ... "vit16", "transformer" to the config's words for them. Each row
  lays the points in `grid` (`input.grid_shape`); the Transformer takes the tokens of a `transformer_side`
  square (the points beyond it left out).
  """

  def resnet(c):
    baseline(c, "resnet", size)
    c.input.grid_shape = tuple(grid)

  def vit(patch_size):
    def apply(c):
      baseline(c, "vit", size, patch_size=patch_size)
      c.input.grid_shape = tuple(grid)

    return apply

  def transformer(c):
    baseline(c, "transformer", size)
    c.input.grid_shape = (transformer_side, transformer_side)

  rows = {"resnet": resnet, **{f"vit{p}": vit(p) for p in (2, 4, 8, 16)}, "transformer": transformer}
  return {words.get(row, row): apply for row, apply in rows.items()}
