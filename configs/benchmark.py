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

common = config_args.sibling(__file__, "common")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base()
  c.model = common.perceiver(
    num_classes=10,
    num_latents=128,
    latent_channels=256,
    num_latent_transformers=4,
    num_cross_attends=4,
    num_self_attends_per_block=2,
    num_self_heads=8,
    # Unrolled: 10% faster than scanned at this size on the 2-core CPU (docs/performance.md); the `paper`
    # variant scans, for its compile time.
    scan_repeats=False,
  )
  c.input = common.image_input(num_bands=32, max_resolution=32)
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
  c.optimizer = common.optimizer(
    learning_rate=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0, clip_global_norm=0.0
  )
  c.train = common.train(
    global_batch_size=32, num_steps=100, label_smoothing=0.0, eval_every=100, eval_batch_size=32
  )
  c.benchmark = dict(
    # None: train.global_batch_size over all devices; else this many images on every device.
    batch_per_device=common.placeholder(int),
    warmup_steps=2,
    steps=10,
    # Side of the square matmul timed after every step for the ceiling; None: 2048 on a CPU, 8192 on an
    # accelerator.
    matmul_size=common.placeholder(int),
    # XLA CPU devices of a CPU run (data parallel over them); None: one per core (the most that divide
    # the global batch). Ignored where --xla_force_host_platform_device_count is set, and on accelerators.
    cpu_devices=common.placeholder(int),
  )

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
    common.tiny_perceiver(c)
    c.model.update(num_cross_attends=2, num_latent_transformers=2)
    c.input.max_resolution = 8
    c.dataset.image_size = 8
    c.train.update(global_batch_size=8, eval_batch_size=8)
    c.benchmark.update(warmup_steps=1, steps=2, matmul_size=256)

  variants = {"paper": paper, "bfloat16": bfloat16, "runlocal": runlocal}
  return config_args.apply_arg(c, arg, variants)
