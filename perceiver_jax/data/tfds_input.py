"""TFDS image classification datasets: imagenet2012 (from its manual download), cifar10, mnist, ...

Any TFDS dataset whose supervised keys are an encoded `Image` and a `ClassLabel` works, read from
`config.dataset.data_dir` (TFDS's default directory when None). Nothing is downloaded unless
`config.dataset.download` is True; ImageNet is prepared once with `scripts/prepare_imagenet.py`.

Train batches: each process reads its own equal slice of the train split (the remainder of
n / process_count is left out), in endless epochs. Epoch e of a process is its slice with the files shuffled
and examples shuffled through a buffer, both seeded by (config.seed, process, e). The example at position i
of that endless stream is augmented with stateless ops seeded by (config.seed, process, i): Inception crop
fused with JPEG decoding, flip and RandAugment at the crop's own size, bicubic resize, ImageNet
normalisation. Without MixUp/CutMix, step s takes stream positions [s b, (s + 1) b) and 'label' is int32 [b].

MixUp/CutMix (as the official Perceiver code, two images in, one example out): step s reads the 2b positions
[2 s b, 2 (s + 1) b) and `augment.mix_batch` pairs them, each image used once: the first half MixUp with the
next quarter, the second half CutMix with the last quarter. Each image draws its MixUp ratio and CutMix box
from its own stateless seed (config.seed, process, i), and an example uses its first image's draws. 'label'
is then a float32 soft label [b, num_classes] (rows sum to 1). The pairing is within the process's own 2b
images (the official code pairs within each device's), so a process's batches do not depend on how many
devices it feeds; with one process it is the official pairing of the whole global batch.

Exact resume: for a fixed process count and the same TF/TFDS versions and data files, the batch at step s is
a pure function of (config.seed, s): `train_batches(config, start_step=s)` starts epoch s*r // n (r = b, or
2b with mixing) and skips into it, and yields the very batches an iterator started at 0 yields from step s
on. The skip reads (but does not decode) the skipped records, at most one epoch of them. Not reproducible: a
different process count (the slices change), a rebuilt dataset with different shard files, or a different
`dataset.shuffle_buffer`.

Eval batches: the eval split in file order, split over processes (the first n % process_count get one more
example), centre crop of int(`augment.eval_crop_fraction` x shorter side), bicubic resize, normalised, plus
'eval_mask' bool [b] (False for padding). Every example is counted exactly once and every process yields the
same number of batches, padding with fully masked batches where it has fewer examples.

Config fields read (all declared in configs/imagenet.py) include `augment.crop_min_object_covered`,
`dataset.shuffle_buffer` (records in the training shuffle buffer), `dataset.download` and
`dataset.manual_dir` (ImageNet tars for `download`).
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections.abc import Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from perceiver_jax.data import augment, spec

Batch = dict[str, np.ndarray]

IMAGENET_NAME = "imagenet2012"
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_IMAGENET_HOWTO = (
  "Register at https://image-net.org/download-images and download the ILSVRC2012 training and validation "
  "images (ILSVRC2012_img_train.tar, about 138 GB, and ILSVRC2012_img_val.tar, about 6.3 GB) into one "
  "directory, then run `python scripts/prepare_imagenet.py --manual_dir=THAT_DIR --data_dir=DATA_DIR` once."
)

# Purposes folded into the seeds, so that no two random streams share a seed.
_FILE_ORDER, _EXAMPLE_ORDER, _AUGMENT, _MIX = range(4)


@functools.cache
def _hide_gpus_from_tf() -> None:
  """Keeps TF on the CPU: the accelerators belong to JAX."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF's devices were initialised already (by someone else); too late to hide them.
    pass


def _seed(*words: int) -> int:
  """A 31-bit seed mixed from non-negative integers (NumPy's SeedSequence hash)."""
  return int(np.random.SeedSequence(list(words)).generate_state(1)[0] >> 1)


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} is not in [0, process_count={count}).")
  return index, count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
      f"batch size {global_batch_size} is not divisible by the {process_count} processes; "
      "choose a multiple of the process count."
    )
  return global_batch_size // process_count


# ---------------------------------------------------------------------------------------------------------
# Opening a dataset, with one clear error for each way it can be missing.


class _Source:
  """A prepared TFDS builder plus the keys and facts the pipelines need."""

  def __init__(self, config: ml_collections.ConfigDict):
    _hide_gpus_from_tf()
    name, data_dir = config.dataset.name, config.dataset.data_dir
    download = config.dataset.download
    if data_dir is not None and not epath.Path(data_dir).is_dir() and not download:
      raise FileNotFoundError(
        f"dataset.data_dir={data_dir!r} does not exist. Set --config.dataset.data_dir to the TFDS data "
        f"directory that holds {name}/"
        + (f". {_IMAGENET_HOWTO}" if name == IMAGENET_NAME else " (or set --config.dataset.download=True).")
      )
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(
        f"Unknown dataset.name={name!r}: it is neither 'digits' nor a dataset of tensorflow_datasets "
        f"{tfds.__version__} (for example 'imagenet2012', 'cifar10', 'mnist', 'imagenette')."
      ) from None
    if not builder.is_prepared():
      if download:
        if name == IMAGENET_NAME:
          manual_dir = config.dataset.manual_dir or os.fspath(
            epath.Path(builder.data_dir_root) / "downloads" / "manual"
          )
          prepare_imagenet(manual_dir, str(builder.data_dir_root))
        else:
          builder.download_and_prepare()
      elif name == IMAGENET_NAME:
        raise FileNotFoundError(
          f"ImageNet is not prepared in dataset.data_dir={data_dir!r} (looked for {builder.data_dir}). "
          + _IMAGENET_HOWTO
        )
      else:
        raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared in dataset.data_dir={data_dir!r} (looked for "
          f"{builder.data_dir}) and nothing is downloaded at run time. Prepare it on a machine with internet "
          f"(`tfds build {name} --data_dir=DATA_DIR`) or set --config.dataset.download=True."
        )
    info = builder.info
    self.image_key, self.label_key = info.supervised_keys or ("image", "label")
    features = info.features
    if not isinstance(features[self.image_key], tfds.features.Image) or not isinstance(
      features[self.label_key], tfds.features.ClassLabel
    ):
      raise ValueError(
        f"dataset {name!r} has no (encoded image, class label) pair under {self.image_key!r}, "
        f"{self.label_key!r}: its features are {features}."
      )
    num_classes = features[self.label_key].num_classes
    if num_classes != config.dataset.num_classes:
      raise ValueError(
        f"dataset {name!r} has {num_classes} classes but dataset.num_classes={config.dataset.num_classes}; "
        f"set --config.dataset.num_classes={num_classes} (and the model's num_classes)."
      )
    if config.dataset.num_channels not in (1, 3):
      raise ValueError(f"dataset.num_channels must be 1 or 3, got {config.dataset.num_channels}.")
    self.name, self.builder = name, builder

  def split_size(self, split: str) -> int:
    splits = self.builder.info.splits
    if split not in splits:
      raise ValueError(
        f"dataset {self.name!r} has no split {split!r}; it has {sorted(splits.keys())}. Set "
        "--config.dataset.train_split / --config.dataset.eval_split accordingly."
      )
    return splits[split].num_examples

  def read(self, split: str, start: int, stop: int, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Records [start, stop) of `split` as (encoded image, label) pairs, files shuffled if seeded."""
    read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed,
      interleave_cycle_length=16,  # Fixed so that the order does not depend on the machine.
      try_autocache=False,  # Caching a whole split in memory is not ours to decide per dataset.
      skip_prefetch=True,
    )
    ds = self.builder.as_dataset(
      split=f"{split}[{start}:{stop}]",
      shuffle_files=shuffle_seed is not None,
      decoders={self.image_key: tfds.decode.SkipDecoding()},  # Decoded (and cropped) by us.
      read_config=read_config,
    )
    # `take` guards against sources (like tfds.testing.mock_data) that ignore the slice.
    ds = ds.take(stop - start)
    return ds.map(lambda ex: (ex[self.image_key], tf.cast(ex[self.label_key], tf.int32)))


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split` ('train' or 'eval') of the whole dataset (all processes)."""
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
  source = _Source(config)
  return source.split_size(config.dataset.train_split if split == "train" else config.dataset.eval_split)


# ---------------------------------------------------------------------------------------------------------
# Preprocessing, traced once per process and setting (not once per epoch: tracing RandAugment takes ~1 s).


def _train_params(config: ml_collections.ConfigDict) -> tuple:
  aug = config.augment
  return (
    config.dataset.num_channels,
    config.dataset.image_size,
    tuple(float(a) for a in aug.crop_area),
    tuple(float(a) for a in aug.crop_aspect),
    float(aug.crop_min_object_covered),
    float(aug.eval_crop_fraction),
    bool(aug.flip),
    int(aug.randaugment_layers),
    float(aug.randaugment_magnitude),
    _normalization(config),
  )


def _normalization(config: ml_collections.ConfigDict) -> tuple:
  """(mean, std) per channel, fractions of 255: `augment.normalize_mean` and `augment.normalize_std`."""
  mean, std = tuple(config.augment.normalize_mean), tuple(config.augment.normalize_std)
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(
      f"augment.normalize_mean={mean} and augment.normalize_std={std} must be 3 values each (std positive)."
    )
  return tuple(map(float, mean)), tuple(map(float, std))


@functools.lru_cache(maxsize=16)
def _train_fn(params: tuple, key: int):
  """(encoded image, label, stream position) -> (float32 [S, S, C] augmented, label); seeded by `key`.

  The official Perceiver code's order: crop, flip and RandAugment at the crop's own size, then resize.
  """
  channels, size, area, aspect, min_covered, fallback, flip, layers, magnitude, *normalization = params
  mean, std = normalization[0] if normalization else (augment.IMAGENET_MEAN, augment.IMAGENET_STD)

  def preprocess(image_bytes, label, index):
    seed = tf.stack([tf.constant(key, tf.int64), index])
    crop_seed, flip_seed, randaugment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    box = functools.partial(
      augment.random_crop_box,
      seed=crop_seed,
      area_range=area,
      aspect_range=aspect,
      min_object_covered=min_covered,
      fallback_fraction=fallback,
    )
    image = augment.decode_and_crop(image_bytes, box, channels)  # uint8 [h, w, C], the crop's own size
    if flip:
      image = augment.random_flip(image, flip_seed)
    if layers > 0:
      image = augment.randaugment(image, randaugment_seed, layers, magnitude)
    return augment.normalize(augment.resize(image, size), mean, std), label

  signature = [tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int64)]
  return tf.function(preprocess, input_signature=signature, autograph=False)


@functools.lru_cache(maxsize=16)
def _eval_fn(
  channels: int, size: int, crop_fraction: float, normalization=(augment.IMAGENET_MEAN, augment.IMAGENET_STD)
):
  """(encoded image, label) -> (float32 [S, S, C] centre crop, label); normalization: (mean, std)."""

  def preprocess(image_bytes, label):
    box = functools.partial(augment.central_crop_box, fraction=crop_fraction)
    image = augment.resize(augment.decode_and_crop(image_bytes, box, channels), size)
    return augment.normalize(image, *normalization), label

  signature = [tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)]
  return tf.function(preprocess, input_signature=signature, autograph=False)


@functools.lru_cache(maxsize=16)
def _draws_fn(size: int, mixup_alpha: float, cutmix_alpha: float, key: int):
  """Stream position i -> (MixUp ratio [], CutMix box int32 [4]) of the image there, seeded by (`key`, i)."""

  def draws(index):
    return augment.mix_draws(
      tf.stack([tf.constant(key, tf.int64), index]), size, size, mixup_alpha, cutmix_alpha
    )

  return tf.function(draws, input_signature=[tf.TensorSpec([], tf.int64)], autograph=False)


@functools.lru_cache(maxsize=16)
def _mix_fn(num_classes: int, mixup_alpha: float, cutmix_alpha: float):
  """(images [2b], one-hot labels [2b, K], ratios [2b], boxes [2b, 4]) -> b examples (augment.mix_batch).

  The same traced function serves tf.data and the eager calls on groups stitched across epochs, so a
  group is mixed identically whichever way it was assembled.
  """

  def mix(images, labels, ratios, boxes):
    return augment.mix_batch(images, labels, ratios, boxes, num_classes, mixup_alpha, cutmix_alpha)

  signature = [
    tf.TensorSpec([None, None, None, None], tf.float32),
    tf.TensorSpec([None, num_classes], tf.float32),
    tf.TensorSpec([None], tf.float32),
    tf.TensorSpec([None, 4], tf.int32),
  ]
  return tf.function(mix, input_signature=signature, autograph=False)


# ---------------------------------------------------------------------------------------------------------
# Train.


def _train_epoch(
  source: _Source,
  config: ml_collections.ConfigDict,
  *,
  slice_start: int,
  n: int,
  epoch: int,
  skip: int,
  read: int,
  process_index: int,
) -> tf.data.Dataset:
  """tf.data groups of the `read` stream positions of each step, for one epoch of this process's slice.

  Without mixing a group is (images, labels, real); with it, (images, one-hot labels, ratios, boxes, real),
  and each whole group is already mixed into read / 2 examples (images and labels; the rest as read).
  The epoch's first example has stream position epoch * n; when that is not a multiple of `read`, the first
  group starts with `real=False` filler slots (for the previous epoch's last, short group to fill), so that
  every group holds exactly the slots of one step.
  """
  seed = config.seed
  file_seed = _seed(seed, process_index, _FILE_ORDER, epoch)
  records = source.read(config.dataset.train_split, slice_start, slice_start + n, shuffle_seed=file_seed)
  buffer = min(config.dataset.shuffle_buffer, n)
  records = records.shuffle(buffer, seed=_seed(seed, process_index, _EXAMPLE_ORDER, epoch))
  first = epoch * n + skip  # Stream position of the first example read here.
  # Skipped records are read but never decoded: the skip comes before the map.
  records = records.skip(skip).enumerate(start=first)
  preprocess = _train_fn(_train_params(config), _seed(seed, process_index, _AUGMENT))
  num_classes, size = config.dataset.num_classes, config.dataset.image_size
  mixup_alpha, cutmix_alpha = float(config.augment.mixup_alpha), float(config.augment.cutmix_alpha)
  mixing = spec.mixes(config)  # A step then reads two images per example.
  if mixing:
    draws = _draws_fn(size, mixup_alpha, cutmix_alpha, _seed(seed, process_index, _MIX))

    def example(i, ex):
      image, label = preprocess(ex[0], ex[1], i)
      return (image, tf.one_hot(label, num_classes, dtype=tf.float32), *draws(i), True)

  else:

    def example(i, ex):
      return (*preprocess(ex[0], ex[1], i), True)

  examples = records.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  lead = first % read  # Slots of the current step filled by the previous epoch.
  if lead:
    # Zeros of every part; `real` (a bool) is then False.
    filler = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), examples.element_spec)
    examples = tf.data.Dataset.from_tensors(filler).repeat(lead).concatenate(examples)
  groups = examples.batch(read, num_parallel_calls=tf.data.AUTOTUNE)
  if mixing:
    mix = _mix_fn(num_classes, mixup_alpha, cutmix_alpha)

    def mix_if_whole(images, labels, ratios, boxes, real):
      # Groups that straddle epochs are mixed by the caller once stitched together.
      whole = tf.logical_and(tf.size(real) == read, tf.reduce_all(real))
      images, labels = tf.cond(whole, lambda: mix(images, labels, ratios, boxes), lambda: (images, labels))
      return images, labels, ratios, boxes, real

    groups = groups.map(mix_if_whole, num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return groups.with_options(options).prefetch(tf.data.AUTOTUNE)


def train_batches(
  config: ml_collections.ConfigDict,
  start_step: int = 0,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[Batch]:
  """This process's share of every global train batch from step `start_step` on, forever.

  Each step reads the next b positions of this process's stream, or with MixUp/CutMix on the next 2b, which
  make the b mixed examples (`augment.mix_batch`).

  Yields:
    {'inputs': float32 [b, S, S, C], 'label': int32 [b] or, with MixUp/CutMix, float32 [b, K]},
    b = train.global_batch_size / process_count.
  """
  process_index, process_count = _processes(process_index, process_count)
  batch = _local_batch_size(config.train.global_batch_size, process_count)
  mixing = spec.mixes(config)  # A step then reads two images per example.
  read = 2 * batch if mixing else batch  # Stream positions read per step.
  source = _Source(config)
  split = config.dataset.train_split
  n = source.split_size(split) // process_count
  if n == 0:
    raise ValueError(f"split {split!r} has fewer examples than the {process_count} processes.")
  if mixing:
    mix = _mix_fn(
      config.dataset.num_classes, float(config.augment.mixup_alpha), float(config.augment.cutmix_alpha)
    )
  epoch, skip = divmod(start_step * read, n)
  pending: tuple[np.ndarray, ...] | None = None  # The parts of a step's group begun by an earlier epoch.
  while True:
    ds = _train_epoch(
      source,
      config,
      slice_start=process_index * n,
      n=n,
      epoch=epoch,
      skip=skip,
      read=read,
      process_index=process_index,
    )
    for *parts, real in ds.as_numpy_iterator():
      lead = int(np.sum(~real))
      if lead:  # The epoch's first group: its leading slots belong to the previous epoch.
        parts = [np.concatenate([p, q[lead:]]) for p, q in zip(pending, parts, strict=True)]
        real = np.ones(len(parts[-1]), bool)
      if len(real) < read:  # The epoch's last examples: the step goes on in the next epoch.
        pending = tuple(parts)
        continue
      pending = None
      if lead and mixing:  # tf.data could not mix a group it did not see whole.
        parts[:2] = (t.numpy() for t in mix(*parts))
      yield {"inputs": parts[0], "label": parts[1]}
    epoch, skip = epoch + 1, 0


# ---------------------------------------------------------------------------------------------------------
# Eval.


def eval_shares(num: int, process_count: int) -> list[tuple[int, int]]:
  """[start, stop) of each process's share of `num` eval examples; the first num % count get one more."""
  base, extra = divmod(num, process_count)
  bounds = np.cumsum([0] + [base + (p < extra) for p in range(process_count)])
  return [(int(bounds[p]), int(bounds[p + 1])) for p in range(process_count)]


def eval_batches(
  config: ml_collections.ConfigDict,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[Batch]:
  """This process's share of the eval split, once, padded and masked.

  Yields:
    {'inputs': float32 [b, S, S, C], 'label': int32 [b], 'eval_mask': bool [b]},
    b = train.eval_batch_size / process_count; the same number of batches on every process.
  """
  process_index, process_count = _processes(process_index, process_count)
  batch = _local_batch_size(config.train.eval_batch_size, process_count)
  source = _Source(config)
  split = config.dataset.eval_split
  total = source.split_size(split)
  shares = eval_shares(total, process_count)
  start, stop = shares[process_index]
  largest = shares[0][1] - shares[0][0]  # Process 0's share is never smaller than another's.
  num_batches = -(-largest // batch)
  size, channels = config.dataset.image_size, config.dataset.num_channels
  filler = (tf.zeros([size, size, channels], tf.float32), tf.constant(0, tf.int32), False)
  padding = tf.data.Dataset.from_tensors(filler).repeat(num_batches * batch - (stop - start))
  if stop > start:
    preprocess = _eval_fn(channels, size, float(config.augment.eval_crop_fraction), _normalization(config))
    examples = source.read(split, start, stop).map(
      lambda image, label: (*preprocess(image, label), True), num_parallel_calls=tf.data.AUTOTUNE
    )
    examples = examples.concatenate(padding)
  else:
    examples = padding
  # Padded to a whole number of batches above, so no example is ever dropped here.
  ds = examples.batch(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  for images, labels, mask in ds.as_numpy_iterator():
    yield {"inputs": images, "label": labels, "eval_mask": mask}


# ---------------------------------------------------------------------------------------------------------
# Preparing ImageNet, and fake ImageNet tars for tests and benchmarks.


def prepare_imagenet(manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Builds TFDS imagenet2012 in `data_dir` from the two tars in `manual_dir`; returns the builder.

  Raises:
    FileNotFoundError: a tar is missing (the message says which, where, and how to get it).
  """
  missing = [name for name in IMAGENET_TARS if not (epath.Path(manual_dir) / name).is_file()]
  if missing:
    raise FileNotFoundError(
      f"Expected {' and '.join(missing)} in --manual_dir={manual_dir!r} "
      f"({epath.Path(manual_dir).resolve()}), but {'they are' if len(missing) > 1 else 'it is'} not there. "
      + _IMAGENET_HOWTO
    )
  _hide_gpus_from_tf()
  builder = tfds.builder(IMAGENET_NAME, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


# Real synset ids, so that the real builder accepts them. The builder rewrites the first one's image
# n01739381_1309 from CMYK and the last one's n02105855_2933 from PNG (its lists of known oddities).
FAKE_SYNSETS = ("n01440764", "n01739381", "n02105855")


def _fake_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A smooth colour gradient plus noise: compresses like a photo, unlike pure noise. uint8 [H, W, 3]."""
  y, x = np.mgrid[0:height, 0:width]
  phase = rng.uniform(0, 2 * np.pi, size=3)
  base = [np.sin(x / rng.uniform(5, 40) + y / rng.uniform(5, 40) + p) for p in phase]
  image = 127.5 + 100 * np.stack(base, axis=-1) + rng.normal(0, 10, size=(height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def _encode(image: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
  from PIL import Image

  pil = Image.fromarray(image)
  if mode != "RGB":
    pil = pil.convert(mode)
  buffer = io.BytesIO()
  pil.save(buffer, format=fmt, quality=90) if fmt == "JPEG" else pil.save(buffer, format=fmt)
  return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  member = tarfile.TarInfo(name)
  member.size = len(data)
  tar.addfile(member, io.BytesIO(data))


def write_fake_imagenet(
  manual_dir: str,
  *,
  train_per_class: int = 4,
  num_val: int = 7,
  sizes: Sequence[tuple[int, int]] = ((48, 64), (64, 48), (40, 40), (90, 36), (36, 72)),
  seed: int = 0,
) -> None:
  """Writes small ILSVRC2012_img_{train,val}.tar files laid out like the real ones, into `manual_dir`.

  Train: one inner tar per synset of FAKE_SYNSETS with `train_per_class` JPEGs (including the CMYK and
  PNG-disguised files the builder repairs). Val: `num_val` JPEGs ILSVRC2012_val_0000000k.JPEG, the second
  grayscale; the builder labels them from its own validation_labels.txt.
  """
  rng = np.random.default_rng(seed)
  manual = epath.Path(manual_dir)
  manual.mkdir(parents=True, exist_ok=True)
  sizes = list(sizes)
  train_tar, val_tar = io.BytesIO(), io.BytesIO()  # Written whole through epath (gs:// too).
  with tarfile.open(fileobj=train_tar, mode="w") as train:
    for c, synset in enumerate(FAKE_SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as class_tar:
        for i in range(train_per_class):
          height, width = sizes[(c + i) % len(sizes)]
          image = _fake_image(rng, height, width)
          name = f"{synset}_{10_000 + i}.JPEG"
          data = _encode(image, "JPEG")
          if synset == "n01739381" and i == 0:
            name, data = "n01739381_1309.JPEG", _encode(image, "JPEG", mode="CMYK")
          elif synset == "n02105855" and i == 0:
            name, data = "n02105855_2933.JPEG", _encode(image, "PNG")
          _add(class_tar, name, data)
      _add(train, f"{synset}.tar", inner.getvalue())
  with tarfile.open(fileobj=val_tar, mode="w") as val:
    for i in range(num_val):
      height, width = sizes[i % len(sizes)]
      data = _encode(_fake_image(rng, height, width), "JPEG", mode="L" if i == 1 else "RGB")
      _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", data)
  (manual / IMAGENET_TARS[0]).write_bytes(train_tar.getvalue())
  (manual / IMAGENET_TARS[1]).write_bytes(val_tar.getvalue())
