"""Tests of the TFDS input pipeline, its crops and normalisation (the RandAugment ops: tests/test_augment.py).

A fake ImageNet (3 real synsets x 4 train JPEGs, 7 validation JPEGs of varied sizes, one grayscale, plus
the CMYK and PNG files the builder repairs) is written as the two ILSVRC2012 tars and built once per module
with the real TFDS imagenet2012 builder; generic datasets go through `tfds.testing.mock_data`.
"""

import collections
import importlib.util
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from perceiver_jax import data
from perceiver_jax.data import augment, spec, tfds_input

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL = 12, 7


def imagenet_config(data_dir, arg="runlocal"):
  spec = importlib.util.spec_from_file_location("imagenet_config", ROOT / "configs" / "imagenet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.dataset.data_dir = str(data_dir)
  return config


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
  root = tmp_path_factory.mktemp("fake_imagenet")
  tfds_input.write_fake_imagenet(str(root / "manual"), train_per_class=4, num_val=NUM_VAL)
  tfds_input.prepare_imagenet(str(root / "manual"), str(root / "data"))
  return root / "data"


def expected_val_labels():
  """Class indices of the first NUM_VAL validation images, read straight from TFDS's own label files."""
  folder = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012"
  synsets = (folder / "labels.txt").read_text().split()
  val_synsets = (folder / "validation_labels.txt").read_text().split()[:NUM_VAL]
  return sorted(synsets.index(s) for s in val_synsets)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------------
# The fake ImageNet through the real builder and the pipelines.


def test_fake_imagenet_is_built_with_all_images(fake_imagenet):
  config = imagenet_config(fake_imagenet)
  assert data.num_examples(config, "train") == NUM_TRAIN
  assert data.num_examples(config, "eval") == NUM_VAL


def no_mixing(config):
  """The config without MixUp and CutMix, so that batches hold each example's own int label."""
  config.augment.mixup_alpha = config.augment.cutmix_alpha = 0.0
  return config


@pytest.mark.slow
def test_train_batches_shapes_ranges_and_first_epoch(fake_imagenet):
  config = no_mixing(imagenet_config(fake_imagenet))
  batches = take(data.train_batches(config), 3)
  # Bicubic resizing overshoots [0, 255] near edges, by much less than 30% of the range.
  low = (-0.3 - np.array(augment.IMAGENET_MEAN)) / augment.IMAGENET_STD
  high = (1.3 - np.array(augment.IMAGENET_MEAN)) / augment.IMAGENET_STD
  for batch in batches:
    assert batch["inputs"].shape == (8, 32, 32, 3) and batch["inputs"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert np.all(batch["inputs"] >= low - 1e-5) and np.all(batch["inputs"] <= high + 1e-5)
    assert batch["inputs"].std() > 0.1  # Real pictures, not filler.
  # Stream positions 0..11 are epoch 0 (the second batch straddles epochs): every train image once.
  first_epoch = np.concatenate([batches[0]["label"], batches[1]["label"][:4]])
  # The synsets n01440764, n01739381 and n02105855 are classes 0, 59 and 230 of TFDS's labels.txt.
  assert collections.Counter(first_epoch.tolist()) == {0: 4, 59: 4, 230: 4}


@pytest.mark.slow
def test_train_slices_of_two_processes_cover_the_split(fake_imagenet):
  config = no_mixing(imagenet_config(fake_imagenet))
  labels = []
  for process in range(2):
    batches = take(tfds_input.train_batches(config, process_index=process, process_count=2), 2)
    assert batches[0]["inputs"].shape == (4, 32, 32, 3)
    labels += list(np.concatenate([batches[0]["label"], batches[1]["label"][:2]]))  # 6 = 12 / 2.
  assert collections.Counter(labels) == {0: 4, 59: 4, 230: 4}


def _eval_examples(config, process_count):
  per_process = [
    list(tfds_input.eval_batches(config, process_index=p, process_count=process_count))
    for p in range(process_count)
  ]
  assert len({len(batches) for batches in per_process}) == 1, "processes yield different batch counts"
  examples = []
  for batches in per_process:
    for batch in batches:
      assert batch["eval_mask"].dtype == bool and batch["label"].dtype == np.int32
      for image, label, keep in zip(batch["inputs"], batch["label"], batch["eval_mask"], strict=True):
        if keep:
          examples.append((int(label), image.round(4).tobytes()))
  return sorted(examples), per_process


def test_eval_batches_count_every_example_once(fake_imagenet):
  config = imagenet_config(fake_imagenet)
  examples, (batches,) = _eval_examples(config, 1)
  assert len(batches) == 1 and batches[0]["inputs"].shape == (8, 32, 32, 3)
  assert sum(int(b["eval_mask"].sum()) for b in batches) == NUM_VAL
  assert [label for label, _ in examples] == expected_val_labels()
  assert len({image for _, image in examples}) == NUM_VAL


@pytest.mark.parametrize(
  "process_count, eval_batch_size, batches_per_process",
  [
    (2, 4, 2),
    (2, 2, 4),
    (3, 3, 3),
  ],  # 7 examples: shares 4+3 and 3+2+2; the last two leave whole masked batches.
)
def test_eval_batches_split_over_processes(
  fake_imagenet, process_count, eval_batch_size, batches_per_process
):
  config = imagenet_config(fake_imagenet)
  config.train.eval_batch_size = eval_batch_size
  single, _ = _eval_examples(config, 1)
  split, per_process = _eval_examples(config, process_count)
  assert split == single  # The same examples, each exactly once.
  assert all(len(batches) == batches_per_process for batches in per_process)
  if eval_batch_size == process_count:
    assert not per_process[-1][-1]["eval_mask"].any()  # A process with fewer examples pads a whole batch.


def test_eval_batches_ask_jax_for_the_process(fake_imagenet, monkeypatch):
  config = imagenet_config(fake_imagenet)
  config.train.eval_batch_size = 4
  monkeypatch.setattr(tfds_input.jax, "process_index", lambda: 1)
  monkeypatch.setattr(tfds_input.jax, "process_count", lambda: 2)
  implicit = list(data.eval_batches(config))
  explicit = list(tfds_input.eval_batches(config, process_index=1, process_count=2))
  assert [int(b["eval_mask"].sum()) for b in implicit] == [2, 1]
  for a, b in zip(implicit, explicit, strict=True):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


@pytest.mark.slow
def test_start_step_reproduces_the_stream(fake_imagenet):
  # Exactly reproducible: the whole batch (example order, crops, flips, RandAugment) for a fixed process
  # count; 12 examples in batches of 8 make steps 1 and 4 straddle epochs.
  config = imagenet_config(fake_imagenet)
  from_zero = take(tfds_input.train_batches(config, start_step=0), 5)
  resumed = take(tfds_input.train_batches(config, start_step=1), 4)
  again = take(tfds_input.train_batches(config, start_step=1), 4)
  for a, b, c in zip(from_zero[1:], resumed, again, strict=True):
    for key in ("inputs", "label"):
      np.testing.assert_array_equal(a[key], b[key])
      np.testing.assert_array_equal(b[key], c[key])
  assert not np.array_equal(from_zero[0]["inputs"], from_zero[3]["inputs"])
  config.seed = 1
  assert not np.array_equal(take(tfds_input.train_batches(config), 1)[0]["inputs"], from_zero[0]["inputs"])


@pytest.mark.slow
def test_mixup_cutmix_soft_labels_and_resume(fake_imagenet):
  config = imagenet_config(fake_imagenet)
  assert (config.augment.mixup_alpha, config.augment.cutmix_alpha) == (0.2, 1.0)  # The default recipe.
  from_zero = take(tfds_input.train_batches(config), 3)
  resumed = take(tfds_input.train_batches(config, start_step=1), 2)
  for a, b in zip(from_zero[1:], resumed, strict=True):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["label"], b["label"])
  for batch in from_zero:
    spec.check_batch(batch, spec.batch_spec(config, 8, "train"))  # The batch spec's soft labels.
    assert batch["label"].shape == (8, 1000) and batch["label"].dtype == np.float32
    np.testing.assert_allclose(batch["label"].sum(axis=1), 1.0, rtol=1e-5)
    assert set(np.nonzero(batch["label"].sum(axis=0))[0]) <= {0, 59, 230}
  # Eval has no mixing: the same int labels and images with MixUp and CutMix on or off.
  mixed_config_evals = list(tfds_input.eval_batches(config))
  for batch in mixed_config_evals:
    spec.check_batch(batch, spec.batch_spec(config, 8, "eval"))
  config.augment.mixup_alpha = config.augment.cutmix_alpha = 0.0
  for a, b in zip(mixed_config_evals, tfds_input.eval_batches(config), strict=True):
    assert a["label"].dtype == np.int32
    for key in ("inputs", "label", "eval_mask"):
      np.testing.assert_array_equal(a[key], b[key])


def test_mixed_batches_use_each_image_read_once_as_the_released_code(fake_imagenet):
  # A step of b = 4 mixed examples reads 8 stream positions; the unmixed stream (the same positions, each
  # augmented by its own seed) has them as its steps 2s and 2s + 1. Step 0 is mixed inside tf.data; step 1
  # (positions 8-15 straddle the 12-image epoch) after stitching, checked with both kinds on.
  config = no_mixing(imagenet_config(fake_imagenet))
  config.train.global_batch_size = 4
  plain = take(tfds_input.train_batches(config), 4)
  images = np.concatenate([b["inputs"] for b in plain])  # [16, 32, 32, 3], positions 0-15
  one_hot = np.eye(1000, dtype=np.float32)[np.concatenate([b["label"] for b in plain])]
  assert len({image.tobytes() for image in images}) == 16  # Distinct source images.
  for mixup_alpha, cutmix_alpha, kinds in ((0.2, 0.0, "MMMM"), (0.0, 1.0, "CCCC"), (0.2, 1.0, "MMCC")):
    config.augment.update(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    assert data.images_per_example(config) == 2
    for step, batch in enumerate(take(tfds_input.train_batches(config), 2 if kinds == "MMCC" else 1)):
      read = images[8 * step : 8 * step + 8]
      m = kinds.count("M")
      # The released slicing: images [:m] MixUp with [m:2m], then [2m:2m+c] CutMix with [2m+c:].
      pairs = [(k, m + k) for k in range(m)] + [(2 * m + j, 2 * m + 4 - m + j) for j in range(4 - m)]
      assert sorted(i for pair in pairs for i in pair) == list(range(8))  # Each image read used once.
      for k, (first, partner) in enumerate(pairs):
        x, y, mixed = read[first], read[partner], batch["inputs"][k]
        if kinds[k] == "C":  # Every pixel from x or from y; y's share is its label weight.
          from_partner = np.all(mixed == y, axis=-1) & ~np.all(mixed == x, axis=-1)
          assert np.all(from_partner | np.all(mixed == x, axis=-1))
          weight = 1 - from_partner.mean()
        else:  # mixed = w x + (1 - w) y: w by least squares, then the residual.
          weight = np.sum((mixed - y) * (x - y)) / np.sum((x - y) ** 2)
          np.testing.assert_allclose(mixed, weight * x + (1 - weight) * y, atol=1e-4)
        label = weight * one_hot[8 * step + first] + (1 - weight) * one_hot[8 * step + partner]
        np.testing.assert_allclose(batch["label"][k], label, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Generic TFDS datasets, mocked.


@pytest.mark.parametrize("num_channels", [3, 1])
def test_mock_mnist_train_and_eval(tmp_path, num_channels):
  builder = tfds.builder("mnist", data_dir=str(tmp_path))
  template = tfds.core.ShardedFileTemplate(
    data_dir=builder.data_dir, dataset_name="mnist", filetype_suffix="tfrecord"
  )
  splits = [
    tfds.core.SplitInfo(name=s, shard_lengths=[10], num_bytes=0, filename_template=template)
    for s in ("train", "test")
  ]
  builder.info.set_splits(tfds.core.SplitDict(splits))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)  # Real metadata makes mock_data honour split sizes.

  config = no_mixing(imagenet_config(tmp_path))
  config.dataset.update(name="mnist", num_classes=10, num_channels=num_channels, eval_split="test")
  with tfds.testing.mock_data(
    num_examples=10, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)
  ):
    assert tfds_input.num_examples(config, "train") == 10
    batch = next(tfds_input.train_batches(config))
    evals = list(tfds_input.eval_batches(config))
  assert batch["inputs"].shape == (8, 32, 32, num_channels) and set(batch["label"]) <= set(range(10))
  assert [int(b["eval_mask"].sum()) for b in evals] == [8, 2]
  image = evals[0]["inputs"][0]
  if num_channels == 3:  # Grayscale replicated into RGB: equal channels once normalisation is undone.
    pixels = image * augment.IMAGENET_STD + augment.IMAGENET_MEAN
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-5)
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Errors: one clear message each.


def test_missing_data_dir(tmp_path):
  config = imagenet_config(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"dataset.data_dir=.*nowhere.* does not exist"):
    next(tfds_input.train_batches(config))


def test_unknown_dataset_name(tmp_path):
  config = imagenet_config(tmp_path)
  config.dataset.name = "no_such_dataset"
  with pytest.raises(ValueError, match=r"Unknown dataset.name='no_such_dataset'"):
    tfds_input.num_examples(config, "train")


def test_imagenet_not_prepared(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"ImageNet is not prepared.*prepare_imagenet.py") as error:
    next(tfds_input.eval_batches(imagenet_config(tmp_path)))
  assert "ILSVRC2012_img_train.tar" in str(error.value)


def test_wrong_split_and_class_count(fake_imagenet):
  config = imagenet_config(fake_imagenet)
  config.dataset.eval_split = "test"
  with pytest.raises(ValueError, match=r"no split 'test'; it has \['train', 'validation'\]"):
    next(tfds_input.eval_batches(config))
  config = imagenet_config(fake_imagenet)
  config.dataset.num_classes = 10
  with pytest.raises(ValueError, match="has 1000 classes but dataset.num_classes=10"):
    tfds_input.num_examples(config, "train")


def test_missing_tars(tmp_path):
  (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"")
  with pytest.raises(FileNotFoundError) as error:
    tfds_input.prepare_imagenet(str(tmp_path), str(tmp_path / "data"))
  message = str(error.value)
  assert "Expected ILSVRC2012_img_train.tar in --manual_dir=" in message and "image-net.org" in message
  assert "ILSVRC2012_img_val.tar" in message  # Named in the how-to, though present.


@pytest.mark.slow
def test_prepare_script_fails_cleanly(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / "scripts" / "prepare_imagenet.py"),
      f"--manual_dir={tmp_path}",
      f"--data_dir={tmp_path / 'data'}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
  )
  assert result.returncode != 0
  assert "Expected ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in result.stderr
  assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Crops, flips, normalisation and RandAugment against independent computations.


@pytest.mark.parametrize("height, width", [(100, 300), (300, 100), (224, 224), (375, 500)])
def test_random_crop_boxes_respect_bounds(height, width):
  area_range, aspect_range = (0.08, 1.0), (3 / 4, 4 / 3)
  shape = tf.constant([height, width, 3])

  @tf.function
  def sample(seeds):
    box = lambda seed: tf.stack(augment.random_crop_box(shape, seed, area_range, aspect_range))
    return tf.map_fn(box, seeds, fn_output_signature=tf.int32)

  boxes = sample(tf.stack([tf.zeros(400, tf.int64), tf.range(400, dtype=tf.int64)], axis=1)).numpy()
  top, left, h, w = boxes.T
  assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= height) and np.all(left + w <= width)
  # When TF's 10 attempts fail, the eval centre crop (never the whole image).
  side = int(224 / 256 * min(height, width))
  fallback = (h == side) & (w == side) & (top == (height - side + 1) // 2) & (left == (width - side + 1) // 2)
  assert fallback.mean() < 0.05 and not np.any((h == height) & (w == width) & ~fallback)
  h, w = h[~fallback], w[~fallback]
  # Bounds up to the rounding of each side to whole pixels; the box covers at least 10% of the image.
  assert np.all((w + 1) * (h + 1) >= max(area_range[0], 0.1) * height * width)
  assert np.all((w + 1) / np.maximum(h - 1, 1) >= aspect_range[0])
  assert np.all((w - 1) / (h + 1) <= aspect_range[1])
  assert len(set(zip(h, w, strict=True))) > 100  # Genuinely random.


def _encode(image, fmt):
  buffer = io.BytesIO()
  Image.fromarray(image.squeeze()).save(buffer, format=fmt)
  return buffer.getvalue()


def test_fused_jpeg_crop_equals_decode_then_crop():
  image = np.random.default_rng(0).integers(0, 256, size=(61, 47, 3), dtype=np.uint8)
  data = _encode(image, "JPEG")
  box = (tf.constant(5), tf.constant(9), tf.constant(30), tf.constant(20))
  fused = augment.decode_and_crop(tf.constant(data), lambda shape: box, 3).numpy()
  np.testing.assert_array_equal(fused, tf.io.decode_jpeg(data).numpy()[5:35, 9:29])


@pytest.mark.parametrize("height, width", [(37, 53), (80, 45)])
def test_eval_crop_is_the_centred_square(height, width):
  image = np.random.default_rng(1).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  side = int(224 / 256 * min(height, width))
  top, left = (height - side + 1) // 2, (width - side + 1) // 2
  expected = (
    image[top : top + side, left : left + side] / 255.0 - augment.IMAGENET_MEAN
  ) / augment.IMAGENET_STD
  # PNG is lossless, and resizing to the crop's own size is the identity, so the match is exact.
  preprocess = tfds_input._eval_fn(3, side, 224 / 256)
  got, _ = preprocess(tf.constant(_encode(image, "PNG")), tf.constant(0))
  np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
  # Resized to 16, it is close to PIL's bicubic resize of the same crop (PIL antialiases, TF does not here).
  small, _ = tfds_input._eval_fn(3, 16, 224 / 256)(tf.constant(_encode(image, "PNG")), tf.constant(0))
  crop = Image.fromarray(image[top : top + side, left : left + side]).resize((16, 16), Image.BICUBIC)
  pil = (np.asarray(crop) / 255.0 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
  assert np.abs(small.numpy() - pil).mean() < 60.0 / 255 / 0.22


def test_normalize_is_exact():
  image = np.random.default_rng(2).uniform(0, 255, size=(5, 6, 3)).astype(np.float32)
  expected = (image / 255.0 - np.float32(augment.IMAGENET_MEAN)) / np.float32(augment.IMAGENET_STD)
  np.testing.assert_allclose(augment.normalize(tf.constant(image)).numpy(), expected, rtol=1e-6, atol=1e-6)
  gray = image[..., :1]
  expected = (gray / 255.0 - np.mean(augment.IMAGENET_MEAN)) / np.mean(augment.IMAGENET_STD)
  np.testing.assert_allclose(augment.normalize(tf.constant(gray)).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_flip_is_exact_and_fair():
  image = np.random.default_rng(3).uniform(0, 255, size=(4, 5, 3)).astype(np.float32)
  flipped = 0
  for i in range(200):
    out = augment.random_flip(tf.constant(image), tf.constant([7, i], tf.int64)).numpy()
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 70 <= flipped <= 130


# ---------------------------------------------------------------------------------------------------------
# End to end: the real trainer on the fake ImageNet.


@pytest.mark.slow
def test_train_and_evaluate_on_fake_imagenet(fake_imagenet, tmp_path):
  from perceiver_jax.training import train

  # The random permutation is the path with the most moving parts (per-example keys in train and eval).
  config = imagenet_config(fake_imagenet, "runlocal,permuted_random")
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == config.train.num_steps
  assert results["eval"]["count"] == NUM_VAL  # Every fake validation image exactly once, none twice.
  assert np.isfinite(results["eval"]["loss"])
  assert 0.0 <= results["eval"]["top1"] <= results["eval"]["top5"] <= 1.0
