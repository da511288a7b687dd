"""From a config to a Haiku forward function: front end, then the model named by `config.model_name`.

`make_model(config)` returns an `hk.TransformedWithState` of
`forward(images [B, H, W, C], *, is_training, example_keys=None) -> logits [B, num_classes]`;
with `return_attention=True` (Perceiver only) it returns (logits, per-cross-attend weights [B, h, N, M]).
The model computes in `config.precision` (precision.py); parameters and logits are float32. It is traced
with the kernels of `platform` (attention.kernels_for): the hand-written CPU ones on a CPU, the plain path
on TPU and GPU; None: the default backend's.
The constructor of the model class receives `config.model` as keyword arguments; grid models (those with
`takes_grid_shape = True`) also receive the front end's `grid_shape`.
"""

from __future__ import annotations

import haiku as hk
import jax
import ml_collections

from perceiver_jax.front_ends.images import ImageFrontEnd
from perceiver_jax.models import MODELS, attention, precision


def _model_class(config: ml_collections.ConfigDict) -> type[hk.Module]:
  if config.model_name not in MODELS:
    raise ValueError(
      f"model_name={config.model_name!r} is unknown; known models: {', '.join(sorted(MODELS))}."
    )
  return MODELS[config.model_name]


def front_end(config: ml_collections.ConfigDict) -> ImageFrontEnd:
  """The front end of `config`; only valid inside a Haiku transform."""
  size = config.dataset.image_size
  return ImageFrontEnd(image_shape=(size, size), name="front_end", **config.input.to_dict())


def model_module(config: ml_collections.ConfigDict, grid_shape) -> hk.Module:
  cls = _model_class(config)
  kwargs = config.model.to_dict()
  if getattr(cls, "takes_grid_shape", False):
    kwargs["grid_shape"] = tuple(grid_shape)
  return cls(**kwargs, name=config.model_name)


def make_model(config: ml_collections.ConfigDict, platform: str | None = None) -> hk.TransformedWithState:
  def forward(images, *, is_training: bool, example_keys=None, return_attention: bool = False):
    with attention.kernels_for(platform or jax.default_backend()):
      return _forward(
        images, is_training=is_training, example_keys=example_keys, return_attention=return_attention
      )

  def _forward(images, *, is_training: bool, example_keys=None, return_attention: bool = False):
    frontend = front_end(config)
    tokens = frontend(images, example_keys=example_keys)  # [B, M, C + P]
    model = model_module(config, frontend.grid_shape)
    # config.precision: float32 parameters, compute in float32 or bfloat16, logits back in float32.
    with precision.policy_scope(type(model), config.precision):
      if return_attention:
        return model(tokens, is_training=is_training, return_attention=True)
      return model(tokens, is_training=is_training)

  return hk.transform_with_state(forward)
