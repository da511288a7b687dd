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
  "resnet50": ResNet,
  "vit": ViT,
  "transformer": Transformer,
}
