"""Front ends: the raw inputs of one modality -> tokens [B, M, C] for the model, on device.

`FRONT_ENDS` names every front end a config may ask for (`config.input.front_end`). A front end is a Haiku
module class with
- `input_shape(dataset) -> tuple[int, ...]` (a static method): the shape of one example's `inputs` as
  the configured data source yields it, from the `config.dataset` section (a mapping);
- `input_dtype`: the dtype of `inputs` (a class attribute);
- `__init__(input_shape, **settings, name=None)`: `settings` are the fields of `config.input` but
  `front_end`, by the constructor's argument names;
- `__call__(inputs [B, *input_shape], *, input_mask=None, example_keys=None) -> (tokens [B, M, C],
  token_mask bool [B, M] or None)`. `input_mask` is bool [B, *input_shape[:-1]], one flag per input
  position (True: real, False: padding); the front end carries it to the tokens it makes (through any
  permutation). `example_keys` [B] are per-example keys, for per-example randomness.
A front end with state (BatchNorm) also takes `is_training` in `__call__`; the trainer passes it.
A front end may have a `grid_shape` attribute: models that need a 2-D grid (ResNet, ViT) get it.
A new input type is a module here and a line below, plus a data source (`perceiver_jax.data.SOURCES`).
"""

from __future__ import annotations

import haiku as hk

from perceiver_jax.front_ends.images import ConvImageFrontEnd, ImageFrontEnd

FRONT_ENDS: dict[str, type[hk.Module]] = {
  "image": ImageFrontEnd,
  "image_conv": ConvImageFrontEnd,
}
