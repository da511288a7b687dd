"""From a config to a Haiku forward function: the front end named by `config.input.front_end`, then the
model named by `config.model_name`.

The input contract. A batch is what the batch spec says (`perceiver_jax.data.spec.batch_spec`): `inputs`
[b, *input_shape] (or a mapping modality -> array), an optional `input_mask`, and `label`; the front end
turns `inputs` into tokens [b, M, C] and `input_mask` into a token mask [b, M], which the model receives
as `input_mask`. Nothing else of a modality is known outside its front end and its data source: the shapes
come from the spec (`input_spec`, `dummy_inputs`) and the tokens' from the front end (`token_shape`).

`make_model(config)` returns an `hk.TransformedWithState` of
`forward(inputs [B, ...], *, is_training, input_mask=None, example_keys=None) -> logits [B, num_classes]`;
with `return_attention=True` (Perceiver only) it returns (logits, per-cross-attend weights [B, h, N, M]).
The model computes in `config.precision` (precision.py); parameters and logits are float32. It is traced
with the kernels of `platform` (attention_kernels.kernels_for): the hand-written CPU ones on a CPU, the plain
path on TPU and GPU; None: the default backend's.
The front end's constructor receives `config.input` (but `front_end`) as keyword arguments, the model's
`config.model`; grid models (those with `takes_grid_shape = True`) also receive the front end's
`grid_shape`. A model that cannot mask its tokens is refused a batch with an `input_mask`. A front end
whose `__call__` takes `is_training` (one with BatchNorm) receives it.
"""

from __future__ import annotations

import functools
import inspect

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections

from perceiver_jax.data import spec
from perceiver_jax.front_ends import FRONT_ENDS
from perceiver_jax.models import MODELS, attention_kernels, canonical_name, precision


def _model_class(config: ml_collections.ConfigDict) -> type[hk.Module]:
  name = canonical_name(config.model_name)
  if name not in MODELS:
    raise ValueError(
      f"model_name={config.model_name!r} is unknown; known models: {', '.join(sorted(MODELS))}."
    )
  return MODELS[name]


def front_end_class(config: ml_collections.ConfigDict) -> type[hk.Module]:
  """The class `config.input.front_end` names (front_ends.FRONT_ENDS)."""
  name = config.input.front_end
  if name not in FRONT_ENDS:
    known = ", ".join(sorted(FRONT_ENDS))
    raise ValueError(f"input.front_end={name!r} is unknown; known front ends: {known}.")
  return FRONT_ENDS[name]


def input_spec(config: ml_collections.ConfigDict):
  """One example's `inputs` (the batch spec's): a ShapeDtypeStruct, e.g. (8, 8, 1) float32, or a mapping."""
  return spec.example_inputs(config)


def dummy_inputs(config: ml_collections.ConfigDict, batch_size: int = 1):
  """Zero `inputs` [batch_size, *input_shape] (a mapping of them for modalities), e.g. for initialising."""
  return jax.tree.map(lambda s: jnp.zeros((batch_size, *s.shape), s.dtype), input_spec(config))


def _front_end_of(name: str, settings: dict, input_shape, module_name: str) -> hk.Module:
  if name not in FRONT_ENDS:
    known = ", ".join(sorted(FRONT_ENDS))
    raise ValueError(f"input.modalities' front_end={name!r} is unknown; known front ends: {known}.")
  return FRONT_ENDS[name](input_shape, name=module_name, **settings)


def front_end(config: ml_collections.ConfigDict) -> hk.Module:
  """The front end of `config`; only valid inside a Haiku transform.

  For a mapping of modalities, `config.input.front_end` is 'multimodal' and `config.input.modalities` gives
  each modality's front end and settings ({name: {front_end, **settings}}).
  """
  settings = {k: v for k, v in config.input.to_dict().items() if k != "front_end"}
  shapes = jax.tree.map(lambda s: s.shape, input_spec(config))
  cls = front_end_class(config)
  if isinstance(shapes, dict) != getattr(cls, "composes_modalities", False):
    raise ValueError(
      f"input.front_end={config.input.front_end!r} does not fit dataset.inputs: a mapping of modalities "
      "takes input.front_end='multimodal' (with input.modalities), one array any other front end."
    )
  if isinstance(shapes, dict):
    modalities = settings.pop("modalities", None) or {}
    if set(modalities) != set(shapes):
      raise ValueError(
        f"input.modalities names {sorted(modalities)} but dataset.inputs has {sorted(shapes)}; give each "
        "modality its front end: input.modalities.<name> = dict(front_end=..., **settings)."
      )
    factories = {}
    for name, entry in modalities.items():
      entry = dict(entry)
      kind = entry.pop("front_end", None)
      factories[name] = functools.partial(_front_end_of, kind, entry, shapes[name])
    return cls(shapes, factories, name="front_end", **settings)
  return cls(shapes, name="front_end", **settings)


def token_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(M, C): the tokens of one example that the front end hands the model; traced, nothing runs."""

  def tokens(x, keys):
    module = front_end(config)
    return module(x, example_keys=keys, **_training_flag(module, True))[0]

  f = hk.transform_with_state(tokens)  # Front ends with BatchNorm keep state.
  x = jax.tree.map(lambda s: jax.ShapeDtypeStruct((1, *s.shape), s.dtype), input_spec(config))
  keys = jax.random.split(jax.random.PRNGKey(0), 1)
  out = jax.eval_shape(lambda x: f.apply(*f.init(jax.random.PRNGKey(0), x, keys), None, x, keys)[0], x)
  return out.shape[1], out.shape[2]


def _training_flag(module: hk.Module, is_training: bool) -> dict:
  """{'is_training': ...} for a front end whose __call__ takes it (BatchNorm, SpecAugment), else {}."""
  takes = "is_training" in inspect.signature(type(module).__call__).parameters
  return {"is_training": is_training} if takes else {}


def model_module(config: ml_collections.ConfigDict, grid_shape=None) -> hk.Module:
  cls = _model_class(config)
  kwargs = config.model.to_dict()
  if getattr(cls, "takes_grid_shape", False):
    if grid_shape is None:
      raise ValueError(
        f"model_name={config.model_name!r} needs a 2-D grid of tokens, and input.front_end="
        f"{config.input.front_end!r} gives none; use the image front end."
      )
    kwargs["grid_shape"] = tuple(grid_shape)
  return cls(**kwargs, name=config.model_name)


def takes_input_mask(cls: type[hk.Module]) -> bool:
  """Whether the model's __call__ accepts an `input_mask` (the Perceiver does, the baselines do not)."""
  return "input_mask" in inspect.signature(cls.__call__).parameters


def make_model(config: ml_collections.ConfigDict, platform: str | None = None) -> hk.TransformedWithState:
  def forward(inputs, *, is_training: bool, input_mask=None, example_keys=None, return_attention=False):
    with attention_kernels.kernels_for(platform or jax.default_backend()):
      return _forward(
        inputs,
        is_training=is_training,
        input_mask=input_mask,
        example_keys=example_keys,
        return_attention=return_attention,
      )

  def _forward(inputs, *, is_training: bool, input_mask, example_keys, return_attention: bool):
    frontend = front_end(config)
    flag = _training_flag(frontend, is_training)
    # tokens [B, M, C], token_mask [B, M] or None
    tokens, token_mask = frontend(inputs, input_mask=input_mask, example_keys=example_keys, **flag)
    model = model_module(config, getattr(frontend, "grid_shape", None))
    kwargs = {}
    if token_mask is not None:
      if not takes_input_mask(type(model)):
        raise ValueError(
          f"model_name={config.model_name!r} cannot mask its inputs, and the batches have an input_mask; "
          "use model_name='perceiver' or a data source without padding."
        )
      kwargs["input_mask"] = token_mask
    if return_attention:
      kwargs["return_attention"] = True
    # config.precision: float32 parameters, compute in float32 or bfloat16, logits back in float32.
    with precision.policy_scope(type(model), config.precision):
      return model(tokens, is_training=is_training, **kwargs)

  return hk.transform_with_state(forward)
