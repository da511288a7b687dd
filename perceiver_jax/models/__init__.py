"""The model room: Haiku modules and pure functions, importing nothing of training, data or configs.

`MODELS` names every model a config may ask for (`config.model_name`); each takes the front end's tokens
[B, M, C] and returns logits [B, num_classes]. A model of its own goes in a module here and a line below.
"""

from __future__ import annotations

import haiku as hk

from perceiver_jax.models.baselines import ResNet, Transformer, ViT
from perceiver_jax.models.perceiver import Perceiver

MODELS: dict[str, type[hk.Module]] = {
  "perceiver": Perceiver,
  "resnet": ResNet,
  "vit": ViT,
  "transformer": Transformer,
}

# Names that stored runs may carry for a model above: {stored model_name: MODELS key}. A run keeps its name
# (Haiku prefixes its parameters with it), so its checkpoint loads; tables file it with the model's rows.
ALIASES: dict[str, str] = {"resnet50": "resnet"}


def canonical_name(model_name: str) -> str:
  """The MODELS key of `model_name`, a key itself or an alias of one."""
  return ALIASES.get(model_name, model_name)
