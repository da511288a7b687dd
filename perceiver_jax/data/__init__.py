"""Input pipelines: host-side numpy batches for this process's share of every global batch.

What a batch is, for a config, is said once by the batch spec (`spec.batch_spec(config, b, split)`: shapes
and dtypes, b = global batch size / process count for a source's batches):
- `'inputs'`: [b, *shape] as `config.dataset.inputs` describes one example (None: an image float32
  [b, H, W, C] from `dataset.image_size` and `num_channels`), or a mapping modality -> array;
- `'input_mask'` (only where the inputs are `masked`): bool [b, *shape[:-1]], one flag per input position,
  False for padding (e.g. the tail of a variable-length sequence); a mapping (its masked modalities) for
  a mapping of inputs. The front end and the model leave padding out;
- `'label'`: int32 [b] class indices; float32 [b, num_classes] soft labels when training mixes examples
  (MixUp/CutMix, `spec.mixes`; each of the b examples is then made of two images read,
  `images_per_example`), and multi-hot labels for `config.task='multi_label'`;
- eval batches only, `'eval_mask'`: bool [b], False for padding *examples*, which fill the last batch; they
  are left out of every metric, so every example is counted exactly once across all processes, and every
  process yields the same number of batches.

Every source gives three functions, chosen by `config.dataset.name` in `SOURCES`, and yields batches of
exactly the spec (tests/test_batch_spec.py checks each):
- `train_batches(config, start_step=0)` yields train batches forever. The batch for step s depends only
  on (config.seed, s), so a resumed run sees exactly the data an uninterrupted run would.
- `eval_batches(config)` yields the eval split once, with `eval_mask`.
- `num_examples(config, split)`: examples in `split` ('train' or 'eval').
A new dataset is a module with these three functions and a line in `SOURCES`. Any name not there is a
TFDS dataset (tfds_input). `synthetic` serves any config from its spec (benchmarks, compile checks, toy
runs). A config whose dataset has a `sample_rate` reads any other name as a TFDS audio dataset
(audio_clips). This package never imports the model: position features and permutations are the front end's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import ml_collections
import numpy as np

from perceiver_jax.data import spec

Batch = dict[str, np.ndarray]


def _digits() -> ModuleType:
  from perceiver_jax.data import digits

  return digits


def _synthetic() -> ModuleType:
  from perceiver_jax.data import synthetic

  return synthetic


def _sounds() -> ModuleType:
  from perceiver_jax.data import sounds

  return sounds


def _audio_video() -> ModuleType:
  from perceiver_jax.data import audio_video

  return audio_video


def _shapes() -> ModuleType:
  from perceiver_jax.data import shapes

  return shapes


def _modelnet40() -> ModuleType:
  from perceiver_jax.data import modelnet40  # Imports TensorFlow: only when ModelNet40 is asked for.

  return modelnet40


def _audio_clips() -> ModuleType:
  from perceiver_jax.data import audio_clips  # Imports TensorFlow: only when audio clips are asked for.

  return audio_clips


def _tfds() -> ModuleType:
  from perceiver_jax.data import tfds_input  # Imports TensorFlow: only when a TFDS dataset is asked for.

  return tfds_input


# `config.dataset.name` -> a function returning the source (a module or any object with the three
# functions above), so that a source's imports are paid only when it is used.
SOURCES: dict[str, Callable[[], object]] = {
  "digits": _digits,
  "sounds": _sounds,
  "audio_video": _audio_video,
  "synthetic": _synthetic,
  "shapes": _shapes,
  "modelnet40": _modelnet40,
  "audioset": _audio_clips,
}


def source(config: ml_collections.ConfigDict):
  """The data source of `config.dataset.name`: SOURCES' entry, else a TFDS dataset of that name."""
  name = config.dataset.name
  if name not in SOURCES and "sample_rate" in config.dataset:  # A TFDS audio dataset (audio_clips).
    return _audio_clips()
  if name not in SOURCES and "download" not in config.dataset:  # No TFDS fields: not a TFDS config.
    raise ValueError(
      f"dataset.name={name!r} is not one of this package's sources ({', '.join(sorted(SOURCES))}), and "
      "this config has no TFDS fields (dataset.download, ...) to read it from TFDS: pick one of those "
      "names, or a config written for TFDS datasets (configs/imagenet.py)."
    )
  return SOURCES.get(name, _tfds)()


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[Batch]:
  return source(config).train_batches(config, start_step=start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[Batch]:
  return source(config).eval_batches(config)


def images_per_example(config: ml_collections.ConfigDict) -> int:
  """Training images read per example of a train batch: 2 with MixUp or CutMix on, else 1.

  With `augment.mixup_alpha` or `augment.cutmix_alpha` > 0 two images make one mixed example and each image
  is used once, as in the official Perceiver code. An epoch (a pass over the N training images) is then
  N / (global batch size x this) steps.
  """
  return 2 if spec.mixes(config) else 1


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split` ('train' or 'eval') of the configured dataset."""
  return source(config).num_examples(config, split)
