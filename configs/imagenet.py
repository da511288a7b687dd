"""The paper's Perceiver (FF) on 224x224 ImageNet, with its training recipe (Jaegle et al. 2021).

Model: 512 x 1024 latents, 8 cross-attends (1 head, q/k/v at the input's 261 channels) each followed by a
6-block latent Transformer (8 heads), first cross-attend unshared, the rest and all latent Transformers
shared: 44.9M parameters, 707.2 GFLOPs per image. Dense layers start from the official code's variance
scaling (truncated normal, std 1/sqrt(fan_in)).

Where each recipe value comes from ("paper": Jaegle et al. 2021, Sec. 4.1 and App. A; "official": DeepMind's
released Perceiver training code, deepmind-research perceiver/train, used where the paper is silent):
- augment.crop_area (0.08, 1), crop_aspect (3/4, 4/3): paper (Inception-style crop).
- augment.crop_min_object_covered 0.1 (10 attempts, else the eval centre crop): official.
- augment.flip: paper.
- augment.randaugment_layers 4, randaugment_magnitude 5: official (the paper names RandAugment but not its
  settings); 16 ops at the tensorflow/tpu AutoAugment strengths, on the crop at its own size, then a bicubic
  resize: official.
- augment.mixup_alpha 0.2, cutmix_alpha 1.0 (uniform box area), label smoothing after mixing: official (the
  paper mentions neither). As the official code, a step reads 2 images per example: the first half of them
  MixUp with the next quarter, the second half CutMix with the last quarter, each image used once.
- augment.eval_crop_fraction 224/256: paper (centre crop); int() of it x the shorter side, offset
  (h - s + 1) // 2, bicubic: official.
- optimizer: LAMB at 0.004 for 120 epochs, divided by 10 at epochs 84, 102 and 114: paper. An epoch is a pass
  over the 1,281,167 training images; with mixing a step of 1024 examples reads 2048 of them, so an epoch is
  626 steps and 120 epochs are 75,120 steps (decays at steps 52,584, 63,852 and 71,364); 150,240 steps, of
  1,252 an epoch, with MixUp and CutMix off.
  optimizer.weight_decay 0.1 (biases and norms excluded), clip_global_norm 10, b1 0.9, b2 0.999: official.
- train.label_smoothing 0.1: official. train.global_batch_size 1024: our choice (not in the paper nor in the
  released config; 8 per TPU core on 64 v3 chips x 2 cores, the paper's largest setup being 64 TPUs).

Variants (comma-separated): `official_recipe` (the released code's schedule instead of the paper's: LAMB at
5e-4 x batch / 256, flat for half the steps then cosine to 0, 110 epochs: 68,860 steps at batch 1024; set the
learning rate again if you override the batch size after it. The released code counts N / B steps an epoch
while reading 2B images a step, so its 110 "epochs" were about 137,600 steps at batch 1024 and 220 passes
over the data: `--config.train.num_epochs=220` (137,720 steps) trains about as long as it did), `unshared`,
`learned_pos`, `permuted` (one fixed permutation), `permuted_random` (a fresh one per example),
`cross_attends_at_start`, `cross_attends_only`, `runlocal` (a tiny model and batch, a few steps: the same code
path on a laptop CPU), and key=value overrides such as `num_cross_attends=4`.

Perceiver IO's ImageNet classifiers (Jaegle et al. 2021b, "Perceiver IO", Sec. 4.5 and its appendix; the
three networks DeepMind released, `perceiver_jax.pretrained`): `io_fourier` (pixels + Fourier features,
48.4M parameters, 79.0% top-1 in the paper), `io_learned` (a 1x1 convolution of the pixels to 256 channels
+ a learned 50,176 x 256 position table projected by a Linear, 62.3M, 72.7%), `io_conv` (7x7/2 convolution
to 64 channels, BatchNorm, ReLU, 3x3/2 max-pool, Fourier features of the 56x56 grid, 48.6M, 82.1%). The
encoder is this Perceiver with one cross-attend (the latent Transformer of 6 blocks run 8 times with shared
weights) and the head a decoder (`model.head='decoder'`: a learned query cross-attends to the latents; its
query residual is off for `io_learned`, as released). Recipe: the released code's (`official_recipe`: LAMB
at 2e-3 for a batch of 1024, flat for 55 epochs then cosine to 0 over 55, weight decay 0.1, clipping at
10, label smoothing 0.1, the augmentation above). `train.init_from=W` starts from the parameters
(and BatchNorm statistics) of the run in W, e.g. one `scripts/convert_official_checkpoint.py` wrote; a
head for another number of classes starts afresh, and the optimizer always does. With `runlocal` the io_*
networks have the size of the tiny official networks the tests load (16x16 images, 8 x 16 latents).
"""

import ml_collections

from perceiver_jax import config_args

common = config_args.sibling(__file__, "common")

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base()
  c.model = common.perceiver(
    num_classes=1000,
    size="paper",
    scan_blocks=True,  # the latent Transformer's 6 blocks compiled once (a scan over their stacked weights)
    # Every block recomputed in the backward pass: the step then fits a 16 GB v5e chip at 16 per chip (9.99 GB
    # in float32 with libtpu 0.0.42.1, README's TPU table; 35.7 GB without with libtpu 0.0.52), at about the
    # same step time on a CPU.
    remat=True,
  )
  c.input = common.image_input(num_bands=64, max_resolution=224)
  c.dataset = dict(
    name="imagenet2012",
    data_dir=common.placeholder(str),
    image_size=224,
    num_channels=3,
    inputs=None,  # None: images [image_size, image_size, num_channels]; else data.spec's description.
    num_classes=1000,
    train_split="train",
    eval_split="validation",
    num_train_examples=IMAGENET_TRAIN_EXAMPLES,
    shuffle_buffer=10_000,  # Examples in the training shuffle buffer (at most the split).
    download=False,  # True: prepare the dataset if data_dir lacks it (ImageNet: from manual_dir).
    manual_dir=common.placeholder(str),  # None: <data_dir>/downloads/manual.
  )
  c.augment = dict(
    crop_area=(0.08, 1.0),
    crop_aspect=(3 / 4, 4 / 3),
    crop_min_object_covered=0.1,
    flip=True,
    randaugment_layers=4,
    randaugment_magnitude=5,  # On the 0-10 scale of augment.randaugment_strengths.
    mixup_alpha=0.2,
    cutmix_alpha=1.0,
    eval_crop_fraction=224 / 256,
    # Per-channel mean and std (fractions of 255) the images are normalised with, train and eval: ImageNet's,
    # as DeepMind's Perceiver IO colab and training code use them on 0..255 pixels.
    normalize_mean=(0.485, 0.456, 0.406),
    normalize_std=(0.229, 0.224, 0.225),
  )
  c.optimizer = common.optimizer(
    **common.LAMB, learning_rate=0.004, schedule="step", warmup_steps=0, decay_epochs=(84, 102, 114)
  )
  c.train = common.train(global_batch_size=1024, num_epochs=120, eval_every=5000, eval_batch_size=1024)
  c.checkpoint = common.checkpoint(every=2000)

  def official_recipe(c):
    c.optimizer.learning_rate = 5e-4 * c.train.global_batch_size / 256
    c.optimizer.schedule = "constant_cosine"
    c.optimizer.constant_fraction = 0.5
    c.train.num_epochs = 110

  def unshared(c):
    c.model.share_cross_attends = False
    c.model.share_latent_transformers = False
    # Eight cross-attends of their own, over 50,176 inputs each: with the keys in chunks of 4,096 (an exact
    # online softmax) the step fits a v5e chip at 16 per chip (libtpu 0.0.42.1: 18.6 GB of 17.2 without).
    c.model.cross_attention_chunk_size = 4096

  def learned_pos(c):
    # Table 2: a learned 128-channel position encoding, with a single cross-attend (8 were unstable).
    c.input.position_encoding = "learned"
    c.model.num_cross_attends = 1

  def cross_attends_only(c):
    c.model.num_self_attends_per_block = 0

  def runlocal(c):
    common.tiny_perceiver(c)
    c.model.update(num_cross_attends=2, num_latent_transformers=2)
    c.dataset.image_size = 32
    c.input.max_resolution = 32
    c.dataset.num_train_examples = None  # From the builder's metadata.
    c.augment.randaugment_layers = 1
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    common.tiny_steps(c)

  def perceiver_io(c, decoder_query_residual=True):
    c.model.update(num_cross_attends=1, head="decoder", decoder_num_heads=1)
    c.model.decoder_query_residual = decoder_query_residual
    official_recipe(c)

  def io_learned(c):
    perceiver_io(c, decoder_query_residual=False)
    c.input.update(position_encoding="learned", learned_pos_channels=256, pixel_channels=256)
    c.input.project_positions = True

  def io_conv(c):
    perceiver_io(c)
    size = c.dataset.image_size
    c.input = ml_collections.ConfigDict(
      dict(front_end="image_conv", conv_channels=64, position_encoding="fourier", num_bands=64)
    )
    c.input.max_resolution = (size + 3) // 4  # The pooled grid's side: 56 at 224.

  def runlocal_io(c):
    runlocal(c)
    if c.model.get("head") != "decoder":
      return
    # The io_* networks at the size of the tiny official networks in tests/data (16x16 images).
    c.model.update(num_latents=8, latent_channels=16, num_cross_attends=1, num_self_attends_per_block=2)
    c.dataset.image_size = 16
    if c.input.front_end == "image_conv":
      c.input.update(conv_channels=8, max_resolution=4)
    else:
      c.input.max_resolution = 16
      if c.input.get("pixel_channels"):
        c.input.update(pixel_channels=12, learned_pos_channels=12)

  variants = {
    "io_fourier": perceiver_io,
    "io_learned": io_learned,
    "io_conv": io_conv,
    "official_recipe": official_recipe,
    "unshared": unshared,
    "learned_pos": learned_pos,
    "permuted": lambda c: setattr(c.input, "permutation", "fixed"),
    "permuted_random": lambda c: setattr(c.input, "permutation", "random"),
    "cross_attends_at_start": lambda c: setattr(c.model, "cross_attend_layout", "start"),
    "cross_attends_only": cross_attends_only,
    "runlocal": runlocal_io,
  }
  return config_args.apply_arg(c, arg, _with_baselines(variants, arg))


def _with_baselines(variants: dict, arg: str | None) -> dict:
  """Adds the Table 1/2 baselines as variant words: `resnet50`, `vit_b16`, `transformer64`.

  Each sets `model_name` and replaces `model` wholesale with the baseline's constructor arguments; the
  recipe (optimizer, schedule, augmentation) stays the Perceiver's, as the paper states no other. With
  `runlocal` among the words the baselines are tiny, whatever the order of the words: `runlocal` re-applies
  the baseline after shrinking the rest, since its own model changes are the Perceiver's.
  """
  local = "runlocal" in config_args.parse_arg(arg)[0]

  size = "tiny" if local else "paper"

  def resnet50(c):
    common.baseline(c, "resnet", size)

  def vit_b16(c):
    common.baseline(c, "vit", size, patch_size=8 if local else 16)

  def transformer64(c):
    # The image resized to 64x64 (4,096 tokens); Fourier features of that grid with mu = 64, its Nyquist
    # limit, as mu = 224 is for 224x224. Width 512, 12 layers: ~723 GFLOPs, the Perceiver's compute (see
    # `baselines.Transformer`). runlocal: a 16x16 grid.
    # Its 4,096-token attention: every block recomputed in the backward pass (the paper size's `remat`) and
    # the keys attended in chunks of 1,024, else the step needs 25.8 GB per v5e chip at 16 per chip (20.6 GB
    # with remat alone), measured by scripts/compile_tpu.py with libtpu 0.0.52. runlocal: neither.
    common.baseline(c, "transformer", size, attention_chunk_size=None if local else 1024)
    c.input.resize_to = 16 if local else 64
    c.input.max_resolution = c.input.resize_to

  baselines = {"resnet50": resnet50, "vit_b16": vit_b16, "transformer64": transformer64}
  by_model_name = {"resnet": resnet50, "vit": vit_b16, "transformer": transformer64}

  def runlocal(c):
    variants["runlocal"](c)
    if c.model_name in by_model_name:
      by_model_name[c.model_name](c)

  return {**variants, **baselines, "runlocal": runlocal}
