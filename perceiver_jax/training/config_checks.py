"""The checks of a config's training fields, and the run's length in steps (`validate_config`,
`schedule_length`); the model's fields are checked by the modules themselves.
"""

from __future__ import annotations

import math

import ml_collections

from perceiver_jax import data
from perceiver_jax.data import spec
from perceiver_jax.models.checks import check_positive
from perceiver_jax.training import build


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the fields the loop relies on; model fields are checked by the modules themselves."""
  t = config.train
  names = ("global_batch_size", "eval_batch_size", "log_every", "eval_every")
  check_positive("train.", **{name: t[name] for name in names})
  if (t.num_steps is None) == (t.num_epochs is None):
    raise ValueError(f"Set exactly one of train.num_steps={t.num_steps} and train.num_epochs={t.num_epochs}.")
  if t.num_steps is not None:
    check_positive("train.", num_steps=t.num_steps)
  if t.num_epochs is not None and t.num_epochs <= 0:
    raise ValueError(f"train.num_epochs={t.num_epochs!r} must be positive.")
  if t.profile_steps < 0:
    raise ValueError(f"train.profile_steps={t.profile_steps} must be 0 (off) or a number of steps to trace.")
  if not 0.0 <= t.label_smoothing < 1.0:
    raise ValueError(f"train.label_smoothing={t.label_smoothing} must be in [0, 1).")
  build.front_end_class(config)  # A known front end.
  spec.batch_spec(config, 1)  # Inputs the dataset section describes, and a known task.
  if config.precision not in ("float32", "bfloat16"):
    raise ValueError(f"precision={config.precision!r} must be 'float32' or 'bfloat16'.")


def schedule_length(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(steps per epoch, total steps) of the run; an epoch is a pass over the training images.

  With MixUp/CutMix a step reads two images per example (`data.images_per_example`), so N / (2 B) steps.
  """
  t = config.train
  examples = config.dataset.num_train_examples or data.num_examples(config, "train")
  steps_per_epoch = max(1, math.ceil(examples / (t.global_batch_size * data.images_per_example(config))))
  total = t.num_steps if t.num_steps is not None else int(round(t.num_epochs * steps_per_epoch))
  return steps_per_epoch, total
