"""Train-step throughput: the `bench-small` Perceiver of shared/bench/README.md on synthetic images.

bench-small: 32x32x3 images, 32 Fourier bands (max resolution 32; 133 channels per token), 128 x 256
latents, 4 cross-attends (1 head), each followed by a latent Transformer of 2 self-attention blocks
(8 heads), batch 32, 10 classes, float32: 1.712 GFLOPs forward, 5.137 trained per image.

Variants (comma-separated): `paper` (the paper's ImageNet model at 224x224, 707.2 GFLOPs per image,
`benchmark.batch_per_device` images per device), `bfloat16` (mixed precision), `runlocal` (a tiny model,
two timed steps: the test suite's form), and key=value overrides such as `batch_per_device=1` or
`cpu_devices=1` (CPU runs are data parallel over one XLA device per core by default).

  python scripts/benchmark.py --config=configs/benchmark.py[:variants]
"""

import ml_collections

from perceiver_jax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_name = "perceiver"
  # data.spec.TASKS: "single_label" (softmax, top-1/top-5) or "multi_label" (per-class sigmoid, mAP).
  c.task = "single_label"
  c.model = dict(
    num_classes=10,
    num_latents=128,
    latent_channels=256,
    num_latent_transformers=4,
    num_cross_attends=4,
    num_self_attends_per_block=2,
    num_cross_heads=1,
    num_self_heads=8,
    cross_qk_channels=None,
    widening_factor=1,
    dropout_rate=0.0,
    share_cross_attends=True,
    share_latent_transformers=True,
    cross_attend_layout="interleaved",
    # Speed switches (see docs/performance.md); the defaults are the fastest on a CPU.
    attention_impl="xla",
    cross_attention_chunk_size=None,
    # Unrolled: 10% faster than scanned at this size on the 2-core CPU (docs/performance.md); the `paper`
    # variant scans, for its compile time.
    scan_repeats=False,
    scan_blocks=False,
    remat=False,
  )
  c.input = dict(
    front_end="image",  # front_ends.FRONT_ENDS: what turns the batches' `inputs` into tokens
    position_encoding="fourier",
    num_bands=32,
    max_resolution=32,
    learned_pos_channels=128,
    permutation="none",
    permutation_seed=0,
  )
  c.dataset = dict(
    name="synthetic",
    image_size=32,
    num_channels=3,
    inputs=None,  # None: images [image_size, image_size, num_channels]; else data.spec's description.
    num_classes=10,
    num_train_examples=None,
    num_eval_examples=256,  # The synthetic source's eval split (the benchmark times training only).
  )
  # Adam at a constant rate, as the peers' steps use.
  c.optimizer = dict(
    name="adamw",
    learning_rate=1e-3,
    schedule="constant",
    warmup_steps=0,
    decay_epochs=(),
    decay_factor=0.1,
    constant_fraction=0.5,  # Only for schedule "constant_cosine": the flat share of the steps.
    weight_decay=0.0,
    clip_global_norm=0.0,
    b1=0.9,
    b2=0.999,
  )
  c.train = dict(
    global_batch_size=32,
    num_steps=100,
    num_epochs=None,
    label_smoothing=0.0,
    log_every=100,
    # Steps to trace with jax.profiler after the first compile, into the workdir (0: off).
    profile_steps=0,
    eval_every=100,
    eval_batch_size=32,
    # A run directory whose parameters the run starts from (configs/imagenet.py).
    init_from=ml_collections.config_dict.placeholder(str),
  )
  c.precision = "float32"
  c.benchmark = dict(
    # None: train.global_batch_size over all devices; else this many images on every device.
    batch_per_device=ml_collections.config_dict.placeholder(int),
    warmup_steps=2,
    steps=10,
    # Side of the square matmul timed after every step for the ceiling; None: 2048 on a CPU, 8192 on an
    # accelerator.
    matmul_size=ml_collections.config_dict.placeholder(int),
    # XLA CPU devices of a CPU run (data parallel over them); None: one per core (the most that divide the
    # global batch). Ignored where --xla_force_host_platform_device_count is set, and on accelerators.
    cpu_devices=ml_collections.config_dict.placeholder(int),
  )
  c = ml_collections.ConfigDict(c)

  def paper(c):
    c.model.update(
      num_classes=1000,
      num_latents=512,
      latent_channels=1024,
      num_latent_transformers=8,
      num_cross_attends=8,
      num_self_attends_per_block=6,
    )
    c.model.update(scan_repeats=True, scan_blocks=True)  # As configs/imagenet.py: compiled once each.
    c.input.update(num_bands=64, max_resolution=224)
    c.dataset.update(image_size=224, num_classes=1000)
    # 8 per device: the paper-scale recipe's 1024 over 128 TPU cores; on a CPU use batch_per_device=1.
    c.benchmark.update(batch_per_device=8, warmup_steps=1, steps=2)

  def bfloat16(c):
    c.precision = "bfloat16"

  def runlocal(c):
    c.model.update(
      num_latents=16,
      latent_channels=32,
      num_cross_attends=2,
      num_latent_transformers=2,
      num_self_attends_per_block=1,
      num_self_heads=2,
    )
    c.input.update(num_bands=4, max_resolution=8)
    c.dataset.image_size = 8
    c.train.update(global_batch_size=8, eval_batch_size=8)
    c.benchmark.update(warmup_steps=1, steps=2, matmul_size=256)

  variants = {"paper": paper, "bfloat16": bfloat16, "runlocal": runlocal}
  return config_args.apply_arg(c, arg, variants)
