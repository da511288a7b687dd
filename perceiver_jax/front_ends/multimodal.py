"""The multimodal front end (`input.front_end="multimodal"`): a mapping of modalities -> one token array.

As the official Perceiver IO's multimodal preprocessor: each modality's own front end makes its tokens
[B, M_i, C_i]; each is padded in channels to the common width C = max_i C_i + min_padding_size with a
learned vector of its modality (the modality embedding, [C - C_i], the same for all its tokens), and the
modalities are concatenated along the tokens in sorted name order: [B, sum_i M_i, C]. Token masks follow:
a modality without a mask counts all its tokens real; the result has no mask if no modality has one.
Per-example keys are folded with the modality's position, so that modalities draw independent randomness.
`is_training` reaches every modality's front end that takes it (SpecAugment, BatchNorm).

Modality dropout (`modality_dropout = {name: p}`, training only): the whole stream of that modality of an
example is zeroed with probability p before its front end, a Bernoulli draw from the example's key (folded
with a number no modality's key uses), so that the model learns to answer from the other modalities. The
paper's audio+video model zeroes the video with p = 0.3; its tuned mel model also drops the spectrogram with
p = 0.1 (its raw samples are zeroed, so the spectrogram is one constant: no information, as a zeroed video).
Tokens keep their position features and modality embedding; the mask is unchanged, so that an example whose
every stream is dropped still has tokens to attend to.

The front ends of the modalities are built by the caller (training.build, from `config.input.modalities`)
and handed in as factories `name -> Haiku module`, so that they live under this module's name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp


class MultimodalFrontEnd(hk.Module):
  """{modality: inputs [B, ...]} -> tokens [B, M, C] (M = sum of the modalities' tokens)."""

  composes_modalities = True

  def __init__(
    self,
    input_shape: Mapping[str, tuple[int, ...]],
    front_ends: Mapping[str, Callable[[str], hk.Module]],
    min_padding_size: int = 2,
    modality_dropout: Mapping[str, float] | None = None,
    name: str | None = None,
  ):
    """`modality_dropout`: {modality: probability of zeroing its whole stream of an example in training}."""
    super().__init__(name=name)
    if set(input_shape) != set(front_ends) or not front_ends:
      raise ValueError(
        f"input.modalities names {sorted(front_ends)} but dataset.inputs has {sorted(input_shape)}; "
        "give each modality of the data a front end."
      )
    if min_padding_size < 0:
      raise ValueError(f"input.min_padding_size={min_padding_size} must be >= 0.")
    self.names = sorted(front_ends)
    self.modality_dropout = dict(modality_dropout or {})
    unknown = set(self.modality_dropout) - set(self.names)
    bad = {k: p for k, p in self.modality_dropout.items() if not 0.0 <= p < 1.0}
    if unknown or bad:
      raise ValueError(
        f"input.modality_dropout={self.modality_dropout} must map modalities of {self.names} to a "
        "probability in [0, 1)."
      )
    self.front_ends = front_ends
    self.min_padding_size = min_padding_size

  def dropped(self, name: str, example_keys, batch_size: int):
    """bool [B]: the examples whose `name` stream is zeroed (training only)."""
    p = self.modality_dropout.get(name, 0.0)
    if not p:
      return jnp.zeros((batch_size,), bool)
    if example_keys is None:
      raise ValueError(f"input.modality_dropout.{name} needs example_keys, one key per example.")
    salt = len(self.names) + self.names.index(name)  # No modality's own keys are folded with it.
    return jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, salt), p))(example_keys)

  def __call__(self, inputs, *, input_mask=None, example_keys=None, is_training: bool = False):
    """inputs {name: [B, ...]}, input_mask {name: bool [B, ...]} (masked modalities) or None.

    Returns (tokens [B, M, C], token_mask bool [B, M] or None).
    """
    if set(inputs) != set(self.names):
      raise ValueError(f"The batch's inputs are {sorted(inputs)}; the config's modalities {self.names}.")
    masks = dict(input_mask or {})
    outputs = []
    for position, name in enumerate(self.names):
      keys = None
      if example_keys is not None:
        keys = jax.vmap(lambda k, p=position: jax.random.fold_in(k, p))(example_keys)
      x = inputs[name]
      if is_training and self.modality_dropout.get(name):
        drop = self.dropped(name, example_keys, x.shape[0]).reshape(-1, *[1] * (x.ndim - 1))
        x = jnp.where(drop, jnp.zeros_like(x), x)
      front_end = self.front_ends[name](name)
      takes = "is_training" in inspect.signature(type(front_end).__call__).parameters
      flag = {"is_training": is_training} if takes else {}
      outputs.append(front_end(x, input_mask=masks.get(name), example_keys=keys, **flag))
    width = max(t.shape[-1] for t, _ in outputs) + self.min_padding_size
    tokens, token_masks = [], []
    for name, (t, m) in zip(self.names, outputs, strict=True):
      b, count, channels = t.shape
      if width > channels:
        embedding = hk.get_parameter(  # float32 whatever the tokens' dtype (bfloat16 inputs), cast below.
          f"{name}_embedding", [width - channels], jnp.float32, init=hk.initializers.TruncatedNormal(0.02)
        )
        padding = jnp.broadcast_to(embedding.astype(t.dtype), (b, count, width - channels))
        t = jnp.concatenate([t, padding], axis=-1)
      tokens.append(t)  # [B, M_i, C]
      token_masks.append(jnp.ones((b, count), bool) if m is None else m)
    mask = jnp.concatenate(token_masks, axis=1) if any(m is not None for _, m in outputs) else None
    return jnp.concatenate(tokens, axis=1), mask
