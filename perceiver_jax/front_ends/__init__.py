"""Front ends: the raw inputs of one modality -> tokens [B, M, C] for the model, on device.

`FRONT_ENDS` names every front end a config may ask for (`config.input.front_end`). A front end is a Haiku
module class with
- `__init__(input_shape, **settings, name=None)`: `input_shape` is one example's shape as the batch spec
  says it (`perceiver_jax.data.spec`, from `config.dataset.inputs`; front ends consume it, the data owns
  it); `settings` are the fields of `config.input` but `front_end`, by the constructor's argument names;
- `__call__(inputs [B, *input_shape], *, input_mask=None, example_keys=None) -> (tokens [B, M, C],
  token_mask bool [B, M] or None)`. `input_mask` is bool [B, *input_shape[:-1]], one flag per input
  position (True: real, False: padding); the front end carries it to the tokens it makes (through any
  permutation). `example_keys` [B] are per-example keys, for per-example randomness. A front end whose
  `__call__` also takes `is_training` (training-only augmentation: `mel`'s SpecAugment; BatchNorm state:
  `image_conv`) receives it.
A front end may have a `grid_shape` attribute: models that need a 2-D grid (ResNet, ViT) get it.
Inputs of several modalities (a mapping) go to `multimodal`, which composes one front end per modality
(`config.input.modalities`: {name: {front_end, **settings}}) and pads their tokens to one width with a
learned embedding per modality.
A new input type is a module here and a line below, plus a data source (`perceiver_jax.data.SOURCES`).
"""

from __future__ import annotations

import haiku as hk

from perceiver_jax.front_ends.audio import AudioFrontEnd, MelFrontEnd
from perceiver_jax.front_ends.images import ConvImageFrontEnd, ImageFrontEnd
from perceiver_jax.front_ends.multimodal import MultimodalFrontEnd
from perceiver_jax.front_ends.points import PointsFrontEnd
from perceiver_jax.front_ends.sequences import SequenceFrontEnd
from perceiver_jax.front_ends.video import VideoFrontEnd

FRONT_ENDS: dict[str, type[hk.Module]] = {
  "audio": AudioFrontEnd,
  "image": ImageFrontEnd,
  "mel": MelFrontEnd,
  "multimodal": MultimodalFrontEnd,
  "sequence": SequenceFrontEnd,
  "points": PointsFrontEnd,
  "image_conv": ConvImageFrontEnd,
  "video": VideoFrontEnd,
}
