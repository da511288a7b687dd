"""Tests of the RandAugment ops, MixUp and CutMix (perceiver_jax/data/augment.py).

Each op is checked against PIL or a second computation in NumPy, each op's strength at magnitude 5 against
the tensorflow/tpu AutoAugment formulas the official Perceiver code uses, and the whole train augmentation
against real photographs (scikit-learn's two sample images).
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from perceiver_jax.data import augment, tfds_input

SIGN = tf.constant(1.0)
SEED = tf.constant([3, 4], tf.int64)


@pytest.fixture(scope="module")
def photo():
  """A uint8 [40, 60, 3] image with an uneven histogram, so that the ops have something to do."""
  rng = np.random.default_rng(4)
  return (rng.beta(2, 5, size=(40, 60, 3)) * 200 + 20).astype(np.uint8)


def _op(name, image, magnitude=5, sign=1.0, seed=SEED):
  return augment.randaugment_op(name, magnitude)(tf.constant(image), tf.constant(sign), seed).numpy()


# ---------------------------------------------------------------------------------------------------------
# The ops against PIL or NumPy.


def test_pil_equivalent_ops_are_exact(photo):
  pil = Image.fromarray(photo)
  cases = [
    (augment.equalize(tf.constant(photo)), ImageOps.equalize(pil)),
    (augment.posterize(tf.constant(photo), 3), ImageOps.posterize(pil, 3)),
    (augment.solarize(tf.constant(photo), 100), ImageOps.solarize(pil, 100)),
    (augment.invert(tf.constant(photo)), ImageOps.invert(pil)),
  ]
  for ours, theirs in cases:
    np.testing.assert_array_equal(ours.numpy(), np.asarray(theirs))
  lo, hi = photo.min(axis=(0, 1)).astype(int), photo.max(axis=(0, 1)).astype(int)
  np.testing.assert_array_equal(
    augment.auto_contrast(tf.constant(photo)).numpy(), (photo - lo) * 255 // (hi - lo)
  )
  added = np.where(photo < 128, np.minimum(photo.astype(int) + 55, 255), photo)
  np.testing.assert_array_equal(augment.solarize_add(tf.constant(photo), 55).numpy(), added)


def test_enhance_ops_match_pil_up_to_rounding(photo):
  pil = Image.fromarray(photo)
  for name in ("color", "contrast", "brightness", "sharpness"):
    ours = getattr(augment, name)(tf.constant(photo), tf.constant(1.6)).numpy().astype(int)
    theirs = np.asarray(getattr(ImageEnhance, name.capitalize())(pil).enhance(1.6)).astype(int)
    assert np.abs(ours - theirs).max() <= 1, name


def _nearest_affine(image, inverse):
  """NumPy resampling: output (x, y) <- input round(inverse(x, y)), grey outside.

  Rounding half away from zero, as TF's NEAREST (std::round).
  """
  height, width = image.shape[:2]
  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  src_x, src_y = inverse(x, y)
  src_x, src_y = (np.sign(v) * np.floor(np.abs(v) + 0.5) for v in (src_x, src_y))
  src_x, src_y = src_x.astype(int), src_y.astype(int)
  valid = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
  out = np.full_like(image, 128)
  out[valid] = image[src_y[valid], src_x[valid]]
  return out


def test_geometric_ops_against_numpy_and_pil(photo):
  square = photo[:30, :30]
  np.testing.assert_array_equal(augment.rotate(tf.constant(square), 90.0).numpy(), np.rot90(square))
  shifted = np.full_like(photo, 128)
  shifted[:, 7:] = photo[:, :-7]
  np.testing.assert_array_equal(augment.translate(tf.constant(photo), 7.0, axis=1).numpy(), shifted)
  shifted = np.full_like(photo, 128)
  shifted[:-5] = photo[5:]
  np.testing.assert_array_equal(augment.translate(tf.constant(photo), -5.0, axis=0).numpy(), shifted)
  # Binary fractions, so that float32 (TF) and float64 (NumPy) agree on the ties of the rounding.
  shear_x = augment.shear(tf.constant(photo), 0.125, axis=1).numpy()
  np.testing.assert_array_equal(shear_x, _nearest_affine(photo, lambda x, y: (x + 0.125 * y, y)))
  shear_y = augment.shear(tf.constant(photo), -0.25, axis=0).numpy()
  np.testing.assert_array_equal(shear_y, _nearest_affine(photo, lambda x, y: (x, y - 0.25 * x)))
  # PIL's affine samples pixel centres: the same map once shifted by half a pixel, up to ties in rounding.
  height, width = photo.shape[:2]
  pil = Image.fromarray(photo).transform(
    (width, height), Image.AFFINE, (1, 0.125, -0.0625, 0, 1, 0), Image.NEAREST, fillcolor=(128,) * 3
  )
  assert np.mean(np.any(np.asarray(pil) != shear_x, axis=-1)) < 0.02
  angle = np.deg2rad(15.0)
  cy, cx = (height - 1) / 2, (width - 1) / 2
  rotated = _nearest_affine(
    photo,
    lambda x, y: (
      cx + np.cos(angle) * (x - cx) - np.sin(angle) * (y - cy),
      cy + np.sin(angle) * (x - cx) + np.cos(angle) * (y - cy),
    ),
  )
  ours = augment.rotate(tf.constant(photo), 15.0).numpy()
  assert np.mean(np.any(ours != rotated, axis=-1)) < 0.01  # Float rounding of the matrix at pixel ties.


def test_cutout_fills_one_grey_square(photo):
  for i in range(20):
    out = augment.cutout(tf.constant(photo), 8, tf.constant([1, i], tf.int64)).numpy()
    changed = np.any(out != photo, axis=-1)
    rows, cols = np.nonzero(np.all(out == 128, axis=-1) | changed)
    grey = np.zeros_like(changed)
    grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    assert np.all(out[grey] == 128) and not np.any(changed & ~grey)
    assert rows.max() - rows.min() + 1 <= 16 and cols.max() - cols.min() + 1 <= 16


# ---------------------------------------------------------------------------------------------------------
# Strengths at magnitude 5, against the formulas (tensorflow/tpu AutoAugment, level = M / 10).


def test_strengths_follow_the_reference_formulas():
  for magnitude in (0, 5, 9):
    level = magnitude / 10
    expected = {
      "rotate": 30 * level,
      "posterize": int(4 * level),
      "solarize": int(256 * level),
      "enhance": 1.8 * level + 0.1,
      "shear": 0.3 * level,
      "translate": 100 * level,
      "cutout": int(40 * level),
      "solarize_add": int(110 * level),
    }
    got = augment.randaugment_strengths(magnitude)
    assert got.keys() == expected.keys()
    for key in expected:
      assert got[key] == pytest.approx(expected[key]), (magnitude, key)


def test_each_op_at_magnitude_5_has_the_reference_strength():
  # A 200 x 240 canvas with gradients, so that every op's effect can be measured against its parameter.
  y, x = np.mgrid[0:200, 0:240]
  canvas = np.stack([x % 256, (y + 40) % 256, (x + y) // 2 % 256], axis=-1).astype(np.uint8)
  # Solarize at 128: below it unchanged, at and above inverted.
  out = _op("solarize", canvas)
  np.testing.assert_array_equal(out, np.where(canvas < 128, canvas, 255 - canvas))
  # SolarizeAdd: +55 below 128.
  np.testing.assert_array_equal(
    _op("solarize_add", canvas), np.where(canvas < 128, np.minimum(canvas.astype(int) + 55, 255), canvas)
  )
  # Posterize keeps 2 bits.
  assert set(np.unique(_op("posterize", canvas))) <= {0, 64, 128, 192}
  # Enhance factor 1.0: the identity.
  for name in ("color", "contrast", "brightness", "sharpness"):
    np.testing.assert_array_equal(_op(name, canvas), canvas, err_msg=name)
  # Translate by 50 px, either sign.
  np.testing.assert_array_equal(_op("translate_x", canvas)[:, 50:], canvas[:, :-50])
  np.testing.assert_array_equal(_op("translate_y", canvas, sign=-1.0)[:-50], canvas[50:])
  # Shear 0.15: row y moves by 0.15 y pixels.
  np.testing.assert_array_equal(_op("shear_x", canvas)[100, :200], canvas[100, 15:215])
  # Rotate 15 degrees: a bright dot moves along the circle about the centre by 15 degrees.
  dot = np.zeros((101, 101, 3), np.uint8)
  dot[50, 90] = 255  # 40 px right of the centre (50, 50).
  ys, xs = np.nonzero(_op("rotate", dot)[..., 0] == 255)
  degrees = np.rad2deg(np.arctan2(50 - ys.mean(), xs.mean() - 50))  # Counter-clockwise on screen.
  assert degrees == pytest.approx(15.0, abs=1.5)
  # Cutout: a 40 x 40 grey square where it does not touch the border.
  black = np.zeros((400, 400, 3), np.uint8)
  for i in range(6):
    out = _op("cutout", black, seed=tf.constant([5, i], tf.int64))
    rows, cols = np.nonzero(out[..., 0] == 128)
    if 0 < rows.min() and rows.max() < 399 and 0 < cols.min() and cols.max() < 399:
      assert len(rows) == 40 * 40 and rows.max() - rows.min() == 39 and cols.max() - cols.min() == 39


@pytest.mark.slow
def test_randaugment_applies_the_chosen_ops_and_draws_them_uniformly(photo):
  @tf.function
  def both(seed):
    choices = augment.randaugment_choices(seed, 1)
    return augment.randaugment(tf.constant(photo), seed, 1, 5), choices[0]

  counts = np.zeros(len(augment.RANDAUGMENT_OPS), int)
  for i in range(160):
    out, (index, sign, op_seed) = both(tf.constant([0, i], tf.int64))
    name = augment.RANDAUGMENT_OPS[int(index)]
    expected = augment.randaugment_op(name, 5)(tf.constant(photo), sign, op_seed).numpy()
    np.testing.assert_array_equal(out.numpy(), expected, err_msg=name)
    counts[int(index)] += 1
  # 10 expected per op; every op is drawn and none hogs the draws.
  assert counts.min() >= 1 and counts.max() <= 25, counts


def test_randaugment_is_a_pure_function_of_the_seed(photo):
  run = tf.function(lambda seed: augment.randaugment(tf.constant(photo), seed, 4, 5))
  outputs = [run(tf.constant([0, i], tf.int64)).numpy() for i in range(12)]
  np.testing.assert_array_equal(outputs[0], run(tf.constant([0, 0], tf.int64)).numpy())
  assert all(o.shape == photo.shape and o.dtype == np.uint8 for o in outputs)
  assert len({o.tobytes() for o in outputs}) >= 8


def _photographs_as_jpeg():
  from sklearn.datasets import load_sample_images

  images = load_sample_images().images  # china.jpg and flower.jpg, 427 x 640, shipped with scikit-learn.
  encoded = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    encoded.append(buffer.getvalue())
  return encoded


def _flat_fraction(layers, magnitude, draws):
  """Share of train-augmented photographs (crop, flip, RandAugment, resize to 64) with a pixel std < 4."""
  params = (3, 64, (0.08, 1.0), (3 / 4, 4 / 3), 0.1, 224 / 256, True, layers, magnitude)
  preprocess = tfds_input._train_fn(params, 7)
  flat = 0
  for i, jpeg in enumerate(_photographs_as_jpeg() * (draws // 2)):
    image, _ = preprocess(tf.constant(jpeg), tf.constant(0), tf.constant(i, tf.int64))
    pixels = image.numpy() * np.float32(augment.IMAGENET_STD) + np.float32(augment.IMAGENET_MEAN)
    flat += float(np.std(pixels * 255)) < 4.0
  return flat / draws


@pytest.mark.slow
def test_no_augmented_photograph_is_flat_at_4_by_5():
  assert _flat_fraction(4, 5, 120) == 0.0
  # The statistic can fail: at 2 x 15 on this scale (factors clipped to 0, solarize at 256) some images are.
  assert _flat_fraction(2, 15, 120) > 0.0


# ---------------------------------------------------------------------------------------------------------
# MixUp and CutMix.


def released_pairs(num_examples, mixup_alpha, cutmix_alpha):
  """(first, partner, is_cutmix) of each example, written out from the official code's slicing of 2B images.

  my_mixup / my_cutmix: images[:B] with images[B:]; my_mixup_cutmix: with q = B/2, images[:q] MixUp with
  images[q:2q], images[2q:3q] CutMix with images[3q:].
  """
  if mixup_alpha > 0 and cutmix_alpha > 0:
    q, rest = num_examples // 2, num_examples - num_examples // 2
    pairs = [(k, q + k, False) for k in range(q)]
    return pairs + [(2 * q + j, 2 * q + rest + j, True) for j in range(rest)]
  return [(k, num_examples + k, cutmix_alpha > 0) for k in range(num_examples)]


@pytest.mark.parametrize("num_examples", [6, 5])
def test_mixing_uses_every_image_once_with_labels_equal_to_the_pixel_shares(num_examples):
  # Each of the 2B source images is its own class, so a soft label names the images an example came from.
  rng = np.random.default_rng(5)
  sources = 2 * num_examples
  images = rng.uniform(-2, 2, size=(sources, 8, 10, 3)).astype(np.float32)
  labels = np.arange(sources, dtype=np.int32)
  assert len({image.tobytes() for image in images}) == sources  # Distinct source images.
  for mixup_alpha, cutmix_alpha in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
    draws = [
      augment.mix_draws(tf.constant([9, i], tf.int64), 8, 10, mixup_alpha, cutmix_alpha)
      for i in range(sources)
    ]
    ratios, boxes = (np.stack([d[part].numpy() for d in draws]) for part in (0, 1))
    mixed, soft = (
      t.numpy() for t in augment.mix_batch(images, labels, ratios, boxes, sources, mixup_alpha, cutmix_alpha)
    )
    assert mixed.shape == (num_examples, 8, 10, 3) and soft.shape == (num_examples, sources)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    pairs = released_pairs(num_examples, mixup_alpha, cutmix_alpha)
    used = [i for first, partner, _ in pairs for i in (first, partner)]
    assert sorted(used) == list(range(sources))  # Every source image exactly once.
    for k, (first, partner, cut) in enumerate(pairs):
      weight = soft[k, first]  # The label's weight of the first image; the rest is the partner's.
      others = np.delete(soft[k], [first, partner])
      assert np.all(others == 0) and np.isclose(soft[k, partner], 1 - weight, atol=1e-6)
      x, y = images[first], images[partner]
      if cut:  # Pixels from the partner fill one box; their share is the partner's label weight.
        from_partner = np.all(mixed[k] == y, axis=-1) & ~np.all(mixed[k] == x, axis=-1)
        assert np.all(from_partner | np.all(mixed[k] == x, axis=-1))
        np.testing.assert_allclose(from_partner.mean(), 1 - weight, atol=1e-6)
        rows, cols = np.nonzero(from_partner)
        if len(rows):
          assert from_partner.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
      else:  # x = w x_first + (1 - w) x_partner with the label's w.
        np.testing.assert_allclose(mixed[k], weight * x + (1 - weight) * y, atol=1e-5)
    # Each example its own draw: the weights differ within a batch.
    assert len(set(np.round(soft.max(axis=1), 6))) > 2


def test_mix_draws_are_a_pure_function_of_the_seed():
  seed = tf.constant([2, 7], tf.int64)
  first, again = (augment.mix_draws(seed, 32, 32, 0.2, 1.0) for _ in range(2))
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  boxes = np.stack(
    [augment.mix_draws(tf.constant([2, i], tf.int64), 32, 32, 0.2, 1.0)[1].numpy() for i in range(60)]
  )
  y0, y1, x0, x1 = boxes.T
  assert np.all((0 <= y0) & (y0 <= y1) & (y1 <= 32) & (0 <= x0) & (x0 <= x1) & (x1 <= 32))
  assert len({tuple(b) for b in boxes}) > 50  # Genuinely per seed.


def test_visualize_augment_draws_the_grid(tmp_path):
  import importlib.util
  import pathlib

  root = pathlib.Path(__file__).resolve().parents[1]

  def load(name, path):
    spec = importlib.util.spec_from_file_location(name, root / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

  config = load("imagenet_config", "configs/imagenet.py").get_config("runlocal")
  script = load("visualize_augment", "scripts/visualize_augment.py")
  photos = _photographs_as_jpeg()
  path = script.draw(config, photos[0], photos[1], rows=1, cols=3, path=str(tmp_path / "grid.png"))
  grid = np.asarray(Image.open(path).convert("RGB"))
  # 1 + 2 mixed rows of 3 panels at 1.25 x 1.35 inches, plus the title.
  dpi = script.DPI
  assert grid.shape == (int(round((3 * 1.35 + 0.3) * dpi)), int(round(3 * 1.25 * dpi)), 3)
  assert grid.std() > 10  # Photographs drawn, not a blank canvas.
