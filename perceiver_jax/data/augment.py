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


def random_crop_box(
  shape: tf.Tensor, seed: tf.Tensor, area_range: Sequence[float], aspect_range: Sequence[float]
) -> Box:
  """Inception-style crop: area fraction in `area_range`, width / height in `aspect_range`.

  Falls back to the whole image when 10 attempts find no such box (TF's rule; rare for natural images).
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
    seed=seed,
    min_object_covered=0.0,  # The area range alone bounds the crop, not overlap with a bounding box.
    aspect_ratio_range=tuple(aspect_range),
    area_range=tuple(area_range),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  return begin[0], begin[1], size[0], size[1]


def central_crop_box(shape: tf.Tensor, fraction: float) -> Box:
  """The centred square whose side is `fraction` of the shorter side (rounded), e.g. 224/256."""
  height, width = shape[0], shape[1]
  side = tf.cast(tf.round(fraction * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
  side = tf.maximum(side, 1)
  return (height - side) // 2, (width - side) // 2, side, side


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
  """Bilinear resize to [size, size] with antialiasing (crops are often several times larger); float32."""
  return tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=True)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrors [H, W, C] left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def normalize(image: tf.Tensor) -> tf.Tensor:
  """[0, 255] -> (x / 255 - mean) / std with ImageNet's statistics; 1-channel images use their averages."""
  channels = image.shape[-1]
  if channels == 3:
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
  elif channels == 1:
    mean, std = np.float32([np.mean(IMAGENET_MEAN)]), np.float32([np.mean(IMAGENET_STD)])
  else:
    raise ValueError(f"normalize handles 1 or 3 channels, got an image of shape {image.shape}.")
  shift, scale = 255 * mean, 1 / (255 * std)
  if image.shape.is_fully_defined():
    # Constants of the image's full shape: TF's CPU kernels broadcast a [C] vector over [H, W, C] several
    # times slower than they apply an elementwise op, and this runs on every training image.
    shift, scale = np.broadcast_to(shift, image.shape), np.broadcast_to(scale, image.shape)
  return (tf.cast(image, tf.float32) - tf.constant(shift)) * tf.constant(scale)


# ---------------------------------------------------------------------------------------------------------
# RandAugment (Cubuk et al. 2020) on uint8 [H, W, C] images, with the paper's 14 operations.
#
# `magnitude` follows the common convention where 10 is each op's nominal strongest setting (rotate 30
# degrees, shear 0.3, translate 45% of the side, enhance factor 1 +- 0.9, posterize to 4 bits, solarize at
# 0); larger magnitudes such as the configs' 15 extrapolate linearly and are clamped where an op's parameter
# has a natural bound.


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
  """Shears along x (axis=1) or y (axis=0) about the centre line, by `amount` pixels per pixel."""
  one, zero = tf.constant(1.0), tf.constant(0.0)
  amount = tf.cast(amount, tf.float32)
  if axis == 1:
    center_y = (tf.cast(tf.shape(image)[0], tf.float32) - 1.0) / 2.0
    return _transform(image, [one, amount, -amount * center_y, zero, one, zero])
  center_x = (tf.cast(tf.shape(image)[1], tf.float32) - 1.0) / 2.0
  return _transform(image, [one, zero, zero, amount, one, -amount * center_x])


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


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
  """Inverts the pixels at or above `threshold`."""
  return tf.where(image < threshold, image, 255 - image)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the `bits` most significant bits of every value."""
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


def _randaugment_ops(magnitude: float, size: tf.Tensor) -> list[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]:
  """The 14 ops as f(uint8 image, sign), with strengths set by `magnitude`; `sign` is +1 or -1."""
  level = magnitude / 10.0
  enhance = lambda sign: tf.maximum(1.0 + sign * 0.9 * level, 0.0)  # noqa: E731
  bits = max(1, min(8, 8 - int(4 * level)))
  threshold = max(0, min(256, int(round(256 - 256 * level))))
  shift = lambda sign, axis: sign * 0.45 * level * tf.cast(size[axis], tf.float32)  # noqa: E731
  return [
    lambda x, s: x,
    lambda x, s: auto_contrast(x),
    lambda x, s: equalize(x),
    lambda x, s: rotate(x, s * 30.0 * level),
    lambda x, s: solarize(x, threshold),
    lambda x, s: color(x, enhance(s)),
    lambda x, s: posterize(x, bits),
    lambda x, s: contrast(x, enhance(s)),
    lambda x, s: brightness(x, enhance(s)),
    lambda x, s: sharpness(x, enhance(s)),
    lambda x, s: shear(x, s * 0.3 * level, axis=1),
    lambda x, s: shear(x, s * 0.3 * level, axis=0),
    lambda x, s: translate(x, shift(s, 1), axis=1),
    lambda x, s: translate(x, shift(s, 0), axis=0),
  ]


RANDAUGMENT_NUM_OPS = 14


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int, magnitude: float) -> tf.Tensor:
  """Applies `num_layers` ops drawn uniformly (with replacement), each at `magnitude`, random sign.

  Args:
    image: uint8 [H, W, C].
    seed: [2] stateless seed.
    num_layers: N in the paper.
    magnitude: M in the paper (10 = nominal maximum, see above).

  Returns:
    uint8 [H, W, C].
  """
  static_shape = image.shape
  ops = _randaugment_ops(magnitude, tf.shape(image))
  for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
    op_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
    index = tf.random.stateless_uniform([], op_seed, minval=0, maxval=len(ops), dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
    branches = [lambda op=op, x=image, s=sign: op(x, s) for op in ops]
    image = tf.switch_case(index, branches)
    image.set_shape(static_shape)
  return image


# ---------------------------------------------------------------------------------------------------------
# MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019), on a whole batch.


def _beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
  gammas = tf.random.stateless_gamma([2], seed, alpha=alpha)
  return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def mix_batch(
  images: tf.Tensor,
  labels: tf.Tensor,
  seed: tf.Tensor,
  num_classes: int,
  mixup_alpha: float,
  cutmix_alpha: float,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Mixes each example with the batch's mirror image (example i with B-1-i), one ratio per batch.

  With both alphas positive each batch uses CutMix or MixUp with probability 1/2.

  Args:
    images: float32 [B, H, W, C].
    labels: int [B], or float [B, K] one-hot.
    seed: [2] stateless seed.
    num_classes: K.
    mixup_alpha: Beta(alpha, alpha) parameter of MixUp's ratio; 0 disables MixUp.
    cutmix_alpha: the same for CutMix's pasted area; 0 disables CutMix.

  Returns:
    (images float32 [B, H, W, C], soft labels float32 [B, K] that sum to 1).
  """
  images, labels = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
  if labels.dtype.is_floating:  # Already one-hot (or soft).
    one_hot = tf.cast(labels, tf.float32)  # [B, K]
  else:
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)  # [B, K]
  partner_images, partner_labels = tf.reverse(images, [0]), tf.reverse(one_hot, [0])
  choose_seed, ratio_seed, box_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))

  def mixup():
    ratio = _beta(ratio_seed, mixup_alpha)
    return ratio * images + (1 - ratio) * partner_images, ratio * one_hot + (1 - ratio) * partner_labels

  def cutmix():
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    side = tf.sqrt(1.0 - _beta(ratio_seed, cutmix_alpha))  # The box covers about 1 - ratio of the area.
    box_h = tf.cast(tf.round(side * tf.cast(height, tf.float32)), tf.int32)
    box_w = tf.cast(tf.round(side * tf.cast(width, tf.float32)), tf.int32)
    center = tf.random.stateless_uniform([2], box_seed)
    center_y = tf.cast(center[0] * tf.cast(height, tf.float32), tf.int32)
    center_x = tf.cast(center[1] * tf.cast(width, tf.float32), tf.int32)
    y0, y1 = tf.maximum(center_y - box_h // 2, 0), tf.minimum(center_y + (box_h + 1) // 2, height)
    x0, x1 = tf.maximum(center_x - box_w // 2, 0), tf.minimum(center_x + (box_w + 1) // 2, width)
    rows, cols = tf.range(height), tf.range(width)
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]  # [H, W]
    mixed = tf.where(inside[None, :, :, None], partner_images, images)
    # The label ratio is the area actually kept after clipping the box at the border.
    ratio = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
    return mixed, ratio * one_hot + (1 - ratio) * partner_labels

  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = tf.random.stateless_uniform([], choose_seed) < 0.5
    images, soft = tf.cond(use_cutmix, cutmix, mixup)
  elif cutmix_alpha > 0:
    images, soft = cutmix()
  elif mixup_alpha > 0:
    images, soft = mixup()
  else:
    return images, one_hot
  return images, soft
