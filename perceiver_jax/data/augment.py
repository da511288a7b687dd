"""Image preprocessing and augmentation as pure TensorFlow functions, for tf.data maps.

Every random function takes a `seed`: an int32/int64 tensor of shape [2] for TF's stateless random ops, so an
example's augmentation is a pure function of that seed (the pipeline derives it from (config.seed, example
index)) and does not depend on thread scheduling or on how many examples came before.

Axes: B batch, H height, W width, C channels, K classes. Pixel values are uint8 or float32 in [0, 255] until
`normalize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

# Per-channel statistics of ImageNet's training images, on the [0, 1] scale; used for every dataset so that
# all sources feed the model inputs of the same scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Grey, the usual fill for pixels that geometric ops move in from outside the image.
_FILL_VALUE = 128

Box = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]  # (offset_y, offset_x, height, width), int32


# ---------------------------------------------------------------------------------------------------------
# Decoding and cropping.


def central_crop_box(shape: tf.Tensor, fraction: float) -> Box:
  """The centred square of side int(`fraction` x shorter side), e.g. 224/256, at offset (h - side + 1) // 2.

  Floor and offset as the official Perceiver code's eval crop (which takes the extra pixel of an odd margin
  at the top and left).
  """
  height, width = shape[0], shape[1]
  side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def random_crop_box(
  shape: tf.Tensor,
  seed: tf.Tensor,
  area_range: Sequence[float],
  aspect_range: Sequence[float],
  min_object_covered: float = 0.1,
  fallback_fraction: float = 224 / 256,
) -> Box:
  """Inception-style crop: area fraction in `area_range`, width / height in `aspect_range`.

  As the official Perceiver code: the box must also cover `min_object_covered` of the whole image, TF gets 10
  attempts, and when they all fail (TF then returns the whole image) the centre crop of `fallback_fraction`
  of the shorter side is taken instead.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
    seed=seed,
    min_object_covered=min_object_covered,
    aspect_ratio_range=tuple(aspect_range),
    area_range=tuple(area_range),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  failed = tf.logical_and(tf.equal(size[0], shape[0]), tf.equal(size[1], shape[1]))
  sampled = (begin[0], begin[1], size[0], size[1])
  centre = central_crop_box(shape, fallback_fraction)
  return tuple(tf.where(failed, c, s) for s, c in zip(sampled, centre, strict=True))


def decode_and_crop(image_bytes: tf.Tensor, box_fn: Callable[[tf.Tensor], Box], channels: int) -> tf.Tensor:
  """Decodes the box `box_fn(shape)` of an encoded image; only that box of a JPEG (fused, much faster).

  Other formats (PNG, ...) are decoded whole, then cropped. `channels` converts on the way: grayscale to RGB
  (replicated) or RGB to grayscale (luma).

  Returns:
    uint8 [h, w, channels].
  """

  def jpeg():
    offset_y, offset_x, height, width = box_fn(tf.image.extract_jpeg_shape(image_bytes))
    window = tf.stack([offset_y, offset_x, height, width])
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=channels)

  def other():
    image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
    offset_y, offset_x, height, width = box_fn(tf.shape(image))
    return image[offset_y : offset_y + height, offset_x : offset_x + width]

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, channels])
  return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize to [size, size], float32, as the official Perceiver code (no antialiasing).

  Not clipped: bicubic overshoots at edges, so values can fall somewhat outside [0, 255].
  """
  return tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bicubic", antialias=False)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrors [H, W, C] left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def normalize(image: tf.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
  """[0, 255] -> (x / 255 - mean) / std per channel (ImageNet's statistics unless given, in fractions of
  255, as DeepMind's Perceiver IO colab applies them); 1-channel images use their averages."""
  channels = image.shape[-1]
  if channels == 3:
    mean, std = np.float32(mean), np.float32(std)
  elif channels == 1:
    mean, std = np.float32([np.mean(mean)]), np.float32([np.mean(std)])
  else:
    raise ValueError(f"normalize handles 1 or 3 channels, got an image of shape {image.shape}.")
  shift, scale = 255 * mean, 1 / (255 * std)
  if image.shape.is_fully_defined():
    # Constants of the image's full shape: TF's CPU kernels broadcast a [C] vector over [H, W, C] several
    # times slower than they apply an elementwise op, and this runs on every training image.
    shift, scale = np.broadcast_to(shift, image.shape), np.broadcast_to(scale, image.shape)
  return (tf.cast(image, tf.float32) - tf.constant(shift)) * tf.constant(scale)


# ---------------------------------------------------------------------------------------------------------
# RandAugment (Cubuk et al. 2020) on uint8 [H, W, C] images, with the 16 ops of the tensorflow/tpu
# AutoAugment lineage that the official Perceiver code uses (Invert, Cutout and SolarizeAdd, no Identity).
#
# `magnitude` M is on that lineage's 0-10 scale and sets each op's strength as it does there (the formulas
# are in `randaugment_strengths`): rotate up to 30 degrees x M/10, shear 0.3 x M/10, translate 100 px x M/10,
# enhance factor M/10 x 1.8 + 0.1 (so 1, the identity, at M = 5), posterize to int(M/10 x 4) bits, solarize
# at int(M/10 x 256), SolarizeAdd +int(M/10 x 110) below 128, Cutout a square of side 2 x int(M/10 x 40).
# Geometric ops and Cutout fill with grey 128; rotate, shear and translate take a random sign. Pixel
# distances are absolute, so the ops run on the crop at its own size, before the resize.


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds and clips float pixels to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Extrapolates from `degenerate` through `image` by `factor` (0: degenerate, 1: image)."""
  degenerate = tf.cast(degenerate, tf.float32)
  return to_uint8(degenerate + factor * (tf.cast(image, tf.float32) - degenerate))


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma of uint8 RGB (ITU-R 601, as PIL's 'L' mode), rounded, [H, W, 1] float32."""
  weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
  return tf.round(tf.reduce_sum(tf.cast(image, tf.float32) * weights, axis=-1, keepdims=True))


def _transform(image: tf.Tensor, matrix: Sequence[tf.Tensor]) -> tf.Tensor:
  """Resamples uint8 [H, W, C] with output pixel (x, y) <- input (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  transform = tf.stack([tf.cast(m, tf.float32) for m in matrix] + [tf.constant(0.0)] * 2)[None]  # [1, 8]
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform,
    output_shape=tf.stack([height, width]),
    fill_value=float(_FILL_VALUE),
    interpolation="NEAREST",  # Keeps uint8 values exact; the model sees resized pixels anyway.
    fill_mode="CONSTANT",
  )
  return out[0]


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
  """Rotates about the image centre (counter-clockwise on screen for positive `degrees`)."""
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(radians), tf.sin(radians)
  center_y = (tf.cast(tf.shape(image)[0], tf.float32) - 1.0) / 2.0
  center_x = (tf.cast(tf.shape(image)[1], tf.float32) - 1.0) / 2.0
  # Inverse map (output -> input) of a rotation about (center_x, center_y); y points down the rows.
  return _transform(
    image,
    [
      cos,
      -sin,
      center_x - cos * center_x + sin * center_y,
      sin,
      cos,
      center_y - sin * center_x - cos * center_y,
    ],
  )


def shear(image: tf.Tensor, amount: tf.Tensor, axis: int) -> tf.Tensor:
  """Shears along x (axis=1) or y (axis=0) about the top-left corner: output (x, y) <- (x + a y, y), or y."""
  one, zero = tf.constant(1.0), tf.constant(0.0)
  amount = tf.cast(amount, tf.float32)
  if axis == 1:
    return _transform(image, [one, amount, zero, zero, one, zero])
  return _transform(image, [one, zero, zero, amount, one, zero])


def translate(image: tf.Tensor, pixels: tf.Tensor, axis: int) -> tf.Tensor:
  """Moves the content by `pixels` along x (axis=1) or y (axis=0), filling with grey."""
  one, zero = tf.constant(1.0), tf.constant(0.0)
  pixels = tf.cast(pixels, tf.float32)
  if axis == 1:
    return _transform(image, [one, zero, -pixels, zero, one, zero])
  return _transform(image, [one, zero, zero, zero, one, -pixels])


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel to [0, 255]: (x - lo) * 255 // (hi - lo); constant channels are kept."""
  pixels = tf.cast(image, tf.int32)
  lo = tf.reduce_min(pixels, axis=[0, 1])  # [C]
  hi = tf.reduce_max(pixels, axis=[0, 1])  # [C]
  stretched = (pixels - lo) * 255 // tf.maximum(hi - lo, 1)
  return tf.cast(tf.where(hi > lo, stretched, pixels), tf.uint8)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  """PIL's histogram equalisation of one uint8 [H, W] channel."""
  pixels = tf.cast(channel, tf.int32)
  histogram = tf.math.bincount(pixels, minlength=256, maxlength=256)  # [256]
  last_used = tf.reduce_max(tf.where(histogram > 0)[:, 0])
  # As in PIL, the count of the highest level present is left out of the step.
  step = (tf.reduce_sum(histogram) - histogram[last_used]) // 255
  exclusive_cumsum = tf.cumsum(histogram, exclusive=True)
  lut = tf.minimum((exclusive_cumsum + step // 2) // tf.maximum(step, 1), 255)
  return tf.cast(tf.where(step > 0, tf.gather(lut, pixels), pixels), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalisation per channel, as PIL.ImageOps.equalize."""
  return tf.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def invert(image: tf.Tensor) -> tf.Tensor:
  """255 - x."""
  return 255 - image


def cutout(image: tf.Tensor, half_side: int, seed: tf.Tensor) -> tf.Tensor:
  """Fills a (2 `half_side`)^2 square centred on a uniformly drawn pixel with grey, clipped at the border."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  center = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
  center_y, center_x = center[0] % height, center[1] % width
  rows, cols = tf.range(height), tf.range(width)
  inside_y = (rows >= center_y - half_side) & (rows < center_y + half_side)
  inside_x = (cols >= center_x - half_side) & (cols < center_x + half_side)
  inside = inside_y[:, None, None] & inside_x[None, :, None]  # [H, W, 1]
  return tf.where(inside, tf.constant(_FILL_VALUE, image.dtype), image)


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
  """Inverts the pixels at or above `threshold`."""
  return tf.where(image < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition: int, threshold: int = 128) -> tf.Tensor:
  """Adds `addition` (clipped to [0, 255]) to the pixels below `threshold`."""
  added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255), tf.uint8)
  return tf.where(image < threshold, added, image)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the `bits` most significant bits of every value (0 bits: black)."""
  mask = (0xFF << (8 - bits)) & 0xFF
  return tf.bitwise.bitwise_and(image, tf.constant(mask, tf.uint8))


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Saturation: blends with the grayscale image (1-channel images are returned unchanged)."""
  if image.shape[-1] != 3:
    return image
  return _blend(_grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with the mean grey level of the image."""
  gray = _grayscale(image) if image.shape[-1] == 3 else tf.cast(image, tf.float32)
  return _blend(tf.round(tf.reduce_mean(gray)) * tf.ones_like(gray), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with black."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with PIL's SMOOTH-filtered image; the one-pixel border keeps its values, as in PIL."""
  channels = image.shape[-1]
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])  # [3, 3, C, 1]
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.pad(tf.round(smooth), [[1, 1], [1, 1], [0, 0]])  # [H, W, C], zero border
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  interior = tf.pad(tf.ones([height - 2, width - 2, 1], tf.bool), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(interior, smooth, tf.cast(image, tf.float32))
  return _blend(degenerate, image, factor)


RANDAUGMENT_OPS = (
  "auto_contrast",
  "equalize",
  "invert",
  "rotate",
  "posterize",
  "solarize",
  "color",
  "contrast",
  "brightness",
  "sharpness",
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
  "cutout",
  "solarize_add",
)


def randaugment_strengths(magnitude: float) -> dict[str, float]:
  """Each op's parameter at `magnitude` (0-10 scale), before the random sign; ops without one are absent.

  rotate: degrees; shear_*: pixels per pixel; translate_*: pixels; cutout: half the square's side;
  solarize: threshold; solarize_add: addition; posterize: bits kept; enhance: the four enhance ops' factor.
  """
  level = float(magnitude) / 10.0
  return {
    "rotate": 30.0 * level,
    "posterize": int(4 * level),
    "solarize": int(256 * level),
    "enhance": 1.8 * level + 0.1,
    "shear": 0.3 * level,
    "translate": 100.0 * level,
    "cutout": int(40 * level),
    "solarize_add": int(110 * level),
  }


def randaugment_op(name: str, magnitude: float) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
  """Op `name` of RANDAUGMENT_OPS at `magnitude`, as f(uint8 image, sign +-1, seed [2])."""
  k = randaugment_strengths(magnitude)
  bits = max(0, min(8, k["posterize"]))
  ops = {
    "auto_contrast": lambda x, s, seed: auto_contrast(x),
    "equalize": lambda x, s, seed: equalize(x),
    "invert": lambda x, s, seed: invert(x),
    "rotate": lambda x, s, seed: rotate(x, s * k["rotate"]),
    "posterize": lambda x, s, seed: posterize(x, bits),
    "solarize": lambda x, s, seed: solarize(x, k["solarize"]),
    "color": lambda x, s, seed: color(x, tf.constant(k["enhance"])),
    "contrast": lambda x, s, seed: contrast(x, tf.constant(k["enhance"])),
    "brightness": lambda x, s, seed: brightness(x, tf.constant(k["enhance"])),
    "sharpness": lambda x, s, seed: sharpness(x, tf.constant(k["enhance"])),
    "shear_x": lambda x, s, seed: shear(x, s * k["shear"], axis=1),
    "shear_y": lambda x, s, seed: shear(x, s * k["shear"], axis=0),
    "translate_x": lambda x, s, seed: translate(x, s * k["translate"], axis=1),
    "translate_y": lambda x, s, seed: translate(x, s * k["translate"], axis=0),
    "cutout": lambda x, s, seed: cutout(x, k["cutout"], seed),
    "solarize_add": lambda x, s, seed: solarize_add(x, k["solarize_add"]),
  }
  if name not in ops:
    raise ValueError(f"Unknown RandAugment op {name!r}; the ops are {RANDAUGMENT_OPS}.")
  return ops[name]


def randaugment_choices(seed: tf.Tensor, num_layers: int) -> list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
  """(op index, sign, op seed) of each layer: a pure function of `seed`."""
  choices = []
  for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
    index_seed, sign_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 3))
    index = tf.random.stateless_uniform([], index_seed, minval=0, maxval=len(RANDAUGMENT_OPS), dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
    choices.append((index, sign, op_seed))
  return choices


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int, magnitude: float) -> tf.Tensor:
  """Applies `num_layers` ops drawn uniformly from the 16 (with replacement), each at `magnitude`.

  Args:
    image: uint8 [H, W, C], any size (the ops' pixel distances are absolute).
    seed: [2] stateless seed.
    num_layers: N in the paper.
    magnitude: M in the paper, on the 0-10 scale of `randaugment_strengths`.

  Returns:
    uint8 [H, W, C].
  """
  static_shape = image.shape
  ops = [randaugment_op(name, magnitude) for name in RANDAUGMENT_OPS]
  for index, sign, op_seed in randaugment_choices(seed, num_layers):
    branches = [lambda op=op, x=image, s=sign, k=op_seed: op(x, s, k) for op in ops]
    image = tf.switch_case(index, branches)
    image.set_shape(static_shape)
  return image


# ---------------------------------------------------------------------------------------------------------
# MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) as the official Perceiver code does them: 2B images
# in, B mixed examples out, each image used once; every image draws its own ratio and box from its own seed.


def _beta(seed: tf.Tensor, alpha: float, shape: Sequence[int]) -> tf.Tensor:
  """Beta(alpha, alpha) draws from two stateless gammas."""
  gammas = tf.random.stateless_gamma([2, *shape], seed, alpha=alpha)
  return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def mix_draws(
  seed: tf.Tensor, height: int, width: int, mixup_alpha: float, cutmix_alpha: float
) -> tuple[tf.Tensor, tf.Tensor]:
  """One image's MixUp ratio and CutMix box, a pure function of its stateless `seed` [2].

  As in the official code every image draws both, and a mixed example uses the draws of its first image.
  MixUp: r ~ Beta(mixup_alpha), the first image's weight. CutMix: a box of about 1 - r of the area,
  r ~ Beta(cutmix_alpha) (1: uniform, the official code's), centred on a uniform pixel and clipped at the
  border, to be pasted from the partner.

  Returns:
    (ratio float32 [] (1 with MixUp off), box int32 [4] = (y0, y1, x0, x1), rows y0 <= y < y1 and columns
    x0 <= x < x1 (empty with CutMix off)).
  """
  mixup_seed, cutmix_seed, box_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  ratio = _beta(mixup_seed, mixup_alpha, []) if mixup_alpha > 0 else tf.constant(1.0)
  if cutmix_alpha <= 0:
    return ratio, tf.zeros([4], tf.int32)
  side = tf.sqrt(1.0 - _beta(cutmix_seed, cutmix_alpha, []))
  box_h = tf.cast(tf.round(side * height), tf.int32)
  box_w = tf.cast(tf.round(side * width), tf.int32)
  center = tf.random.stateless_uniform([2], box_seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
  center_y, center_x = center[0] % height, center[1] % width
  y0, y1 = tf.maximum(center_y - box_h // 2, 0), tf.minimum(center_y + (box_h + 1) // 2, height)
  x0, x1 = tf.maximum(center_x - box_w // 2, 0), tf.minimum(center_x + (box_w + 1) // 2, width)
  return ratio, tf.stack([y0, y1, x0, x1])


def mix_counts(num_examples, mixup_alpha: float, cutmix_alpha: float) -> tuple:
  """(MixUp examples, CutMix examples) among `num_examples` mixed ones (an int or a scalar tensor).

  Halves with both on (MixUp takes the smaller half of an odd count), else all of the one that is on.
  """
  if mixup_alpha > 0 and cutmix_alpha > 0:
    mixup = num_examples // 2
  else:
    mixup = num_examples if mixup_alpha > 0 else 0
  return mixup, num_examples - mixup


def mix_batch(
  images: tf.Tensor,
  labels: tf.Tensor,
  ratios: tf.Tensor,
  boxes: tf.Tensor,
  num_classes: int,
  mixup_alpha: float,
  cutmix_alpha: float,
) -> tuple[tf.Tensor, tf.Tensor]:
  """2B images -> B mixed examples, paired as the official Perceiver code pairs them; each image used once.

  With m MixUp and c CutMix examples (`mix_counts`; m = c = B/2 with both on), example k < m is MixUp of
  image k with image m + k, and example m + j is CutMix of image 2m + j with image 2m + c + j: the first
  half of the 2B images MixUp with the next quarter, the second half CutMix with the last quarter. Each
  example takes the ratio or box its first image drew (`mix_draws`); its label weights are the pixel
  shares actually mixed (for CutMix, the share of pixels kept outside the clipped box). Label smoothing
  belongs after this (the trainer's loss).

  Args:
    images: float32 [2B, H, W, C].
    labels: int [2B], or float [2B, K] one-hot.
    ratios: float32 [2B], each image's MixUp ratio.
    boxes: int32 [2B, 4], each image's CutMix box (y0, y1, x0, x1).
    num_classes: K.
    mixup_alpha: 0 turns MixUp off.
    cutmix_alpha: 0 turns CutMix off.

  Returns:
    (images float32 [B, H, W, C], soft labels float32 [B, K] whose rows sum to 1).
  """
  images, labels = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
  if labels.dtype.is_floating:  # Already one-hot (or soft).
    one_hot = tf.cast(labels, tf.float32)  # [2B, K]
  else:
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)  # [2B, K]
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0.")
  shape = tf.shape(images)
  batch, height, width = shape[0] // 2, shape[1], shape[2]
  num_mixup, num_cutmix = mix_counts(batch, mixup_alpha, cutmix_alpha)
  # Slices of the 2B images: MixUp's first images and partners, then CutMix's. [m or c, ...]
  mixup_first, mixup_partner = slice(0, num_mixup), slice(num_mixup, 2 * num_mixup)
  cutmix_first, cutmix_partner = (
    slice(2 * num_mixup, 2 * num_mixup + num_cutmix),
    slice(2 * num_mixup + num_cutmix, None),
  )

  r = ratios[mixup_first]  # [m]
  mixed = [
    r[:, None, None, None] * images[mixup_first] + (1 - r[:, None, None, None]) * images[mixup_partner]
  ]
  weights = [r]  # The first image's label weight, per example.
  if cutmix_alpha > 0:
    box = boxes[cutmix_first]  # [c, 4]
    rows, cols = tf.range(height)[None], tf.range(width)[None]
    inside_y = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])  # [c, H]
    inside_x = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])  # [c, W]
    inside = inside_y[:, :, None, None] & inside_x[:, None, :, None]  # [c, H, W, 1]
    mixed.append(tf.where(inside, images[cutmix_partner], images[cutmix_first]))
    area = tf.cast((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]), tf.float32)
    weights.append(1.0 - area / tf.cast(height * width, tf.float32))  # The share of pixels kept.
  mixed, weight = tf.concat(mixed, 0), tf.concat(weights, 0)[:, None]  # [B, H, W, C], [B, 1]
  first = tf.concat([one_hot[mixup_first], one_hot[cutmix_first]], 0)  # [B, K]
  partner = tf.concat([one_hot[mixup_partner], one_hot[cutmix_partner]], 0)  # [B, K]
  soft = weight * first + (1 - weight) * partner
  mixed.set_shape([None, *images.shape[1:]])
  return mixed, soft
