r"""Draws one photograph's training augmentations at the configured strength, as one PNG grid.

  python scripts/visualize_augment.py --config=configs/imagenet.py --out=docs/figures/augment_imagenet.png

Each panel is the photograph through the train path of `configs/...`'s `augment` section (Inception crop,
flip, RandAugment on the crop, bicubic resize), with its own stream position as seed, exactly as
`data.train_batches` would augment it; the first panel is the eval centre crop. With MixUp or CutMix on,
two more rows show a batch of these augmentations mixed with a second photograph's (`--other`), paired as
the training batches pair their images (MixUp on the first half of the examples, CutMix on the second),
titled with the weight of the first photograph's label.
`--image` and `--other` default to scikit-learn's two sample photographs (china.jpg, flower.jpg).
"""

import io
import sys

import numpy as np
from absl import app, flags
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from perceiver_jax import cli

_CONFIG = cli.define_config_file("config", None, "Config file, e.g. configs/imagenet.py.")
_IMAGE = flags.DEFINE_string("image", None, "A JPEG or PNG photograph (default: scikit-learn's china.jpg).")
_OTHER = flags.DEFINE_string("other", None, "The photograph mixed in (default: scikit-learn's flower.jpg).")
_ROWS = flags.DEFINE_integer("rows", 3, "Rows of plain augmentations.", lower_bound=1)
_COLS = flags.DEFINE_integer("cols", 6, "Panels per row.", lower_bound=2)
_OUT = flags.DEFINE_string("out", "augment.png", "Output PNG.")
DPI = 80


def _sample_photographs() -> list[bytes]:
  from sklearn.datasets import load_sample_images

  encoded = []
  for image in load_sample_images().images:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    encoded.append(buffer.getvalue())
  return encoded


def _pixels(image: np.ndarray) -> np.ndarray:
  """Normalised float [S, S, C] -> [0, 1] for display (bicubic overshoot clipped)."""
  from perceiver_jax.data import augment

  return np.clip(image * np.float32(augment.IMAGENET_STD) + np.float32(augment.IMAGENET_MEAN), 0.0, 1.0)


def draw(config, photo: bytes, other: bytes, rows: int, cols: int, path: str) -> str:
  """Writes the grid to `path` and returns it."""
  import tensorflow as tf

  from perceiver_jax.data import augment, spec, tfds_input

  tfds_input._hide_gpus_from_tf()
  train = tfds_input._train_fn(
    tfds_input._train_params(config), tfds_input._seed(config.seed, 0, tfds_input._AUGMENT)
  )
  size, channels = config.dataset.image_size, config.dataset.num_channels
  evaluate = tfds_input._eval_fn(
    channels, size, float(config.augment.eval_crop_fraction), tfds_input._normalization(config)
  )

  def augmented(data: bytes, first: int, count: int) -> np.ndarray:
    out = [
      train(tf.constant(data), tf.constant(0), tf.constant(first + i, tf.int64))[0] for i in range(count)
    ]
    return np.stack([o.numpy() for o in out])

  panels = [(evaluate(tf.constant(photo), tf.constant(0))[0].numpy(), "eval crop")]
  panels += [(image, f"train {i}") for i, image in enumerate(augmented(photo, 0, rows * cols - 1))]
  mixing = spec.mixes(config)
  if mixing:
    # 2 cols mixed examples from 4 cols images, paired as `data.train_batches` pairs them: every example's
    # first image an augmentation of the photograph, its partner one of `other`.
    aug = config.augment
    num_mixup, num_cutmix = augment.mix_counts(2 * cols, aug.mixup_alpha, aug.cutmix_alpha)
    photos, others = augmented(photo, 1000, 2 * cols), augmented(other, 2000, 2 * cols)
    order = [photos[:num_mixup], others[:num_mixup], photos[num_mixup:], others[num_mixup:]]
    images = np.concatenate(order)
    labels = np.array([0] * num_mixup + [1] * num_mixup + [0] * num_cutmix + [1] * num_cutmix, np.int32)
    draws = [
      augment.mix_draws(
        tf.constant([config.seed, i], tf.int64), size, size, aug.mixup_alpha, aug.cutmix_alpha
      )
      for i in range(len(images))
    ]
    ratios, boxes = (np.stack([d[part].numpy() for d in draws]) for part in (0, 1))
    mixed, soft = augment.mix_batch(images, labels, ratios, boxes, 2, aug.mixup_alpha, aug.cutmix_alpha)
    mixed, soft = mixed.numpy(), soft.numpy()
    kinds = ["MixUp"] * num_mixup + ["CutMix"] * num_cutmix
    panels += [(mixed[i], f"{kinds[i]} {soft[i, 0]:.2f}") for i in range(2 * cols)]
  total_rows = rows + (2 if mixing else 0)
  fig = Figure(figsize=(cols * 1.25, total_rows * 1.35 + 0.3), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  axes = np.asarray(fig.subplots(total_rows, cols, squeeze=False))
  for ax, (image, title) in zip(axes.flat, panels, strict=True):
    ax.imshow(_pixels(image), interpolation="bilinear")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
  aug = config.augment
  fig.suptitle(
    f"RandAugment {aug.randaugment_layers} x {aug.randaugment_magnitude}, MixUp {aug.mixup_alpha}, "
    f"CutMix {aug.cutmix_alpha}, {size}x{size}",
    fontsize=8,
  )
  buffer, quantized = io.BytesIO(), io.BytesIO()
  fig.savefig(buffer, format="png")
  # 256 colours: a third of the bytes of the full-colour PNG, and the photographs still read.
  Image.open(buffer).convert("RGB").quantize(256).save(quantized, format="png", optimize=True)
  out = epath.Path(path)  # Local or gs://.
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(quantized.getvalue())
  return path


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  samples = None
  photos = []
  for flag, index in ((_IMAGE, 0), (_OTHER, 1)):
    if flag.value is None:
      samples = samples or _sample_photographs()
      photos.append(samples[index])
    elif not epath.Path(flag.value).is_file():
      sys.exit(
        f"visualize_augment: --{flag.name}={flag.value!r} is not a file; give a JPEG or PNG photograph."
      )
    else:
      photos.append(epath.Path(flag.value).read_bytes())
  print(f"Wrote {draw(_CONFIG.value, photos[0], photos[1], _ROWS.value, _COLS.value, _OUT.value)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
