"""Mixed precision (`config.precision`): float32 parameters and optimizer state, float32 or bfloat16 compute.

With 'bfloat16' the model's parameters are cast to bfloat16 where they are read and its inputs on the way
in (a `jmp` policy on the model class, through Haiku's mixed-precision interceptor); its logits come back
in float32, so the loss, the gradients (of the float32 parameters) and the optimizer stay in float32.
Inside, LayerNorm statistics, softmax and the latents' mean are computed in float32 (attention.py).
bfloat16 needs no loss scaling: its exponent range is float32's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import haiku as hk
import jmp

PRECISIONS = ("float32", "bfloat16")


def get_policy(precision: str) -> jmp.Policy:
  """The `jmp` policy of `config.precision`."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}.")
  return jmp.get_policy(f"params=float32,compute={precision},output=float32")


@contextlib.contextmanager
def policy_scope(module_class: type[hk.Module], precision: str) -> Iterator[None]:
  """Applies `precision`'s policy to `module_class` while tracing inside the block (float32: nothing)."""
  policy = get_policy(precision)
  if precision == "float32":
    yield
    return
  with hk.mixed_precision.push_policy(module_class, policy):
    yield
