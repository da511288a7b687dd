"""Starting a run from another run's parameters (`config.train.init_from`), e.g. converted official weights.

Every parameter and Haiku state array of the new model is taken from the source run where it has the same
name and shape. The one exception is the class projection (`<model_name>/classifier`): when the number of
classes differs it keeps its fresh initialisation (zeros), a new head for the new dataset. Anything else that
does not match (a parameter only one side has, another shape) is refused with one line, since it means
another architecture. The optimizer state starts afresh, at step 0. Only a new run starts so: a run that
resumes from its own checkpoint ignores `init_from`.
"""

from __future__ import annotations

from typing import Any

import jax
from absl import logging


def _merge(kind: str, fresh: dict, source: dict, head: str, init_from: str) -> tuple[dict, list[str]]:
  """`fresh` with every array taken from `source`, but a head of another shape; (merged, names kept fresh)."""
  only_fresh = sorted(f"{m}/{n}" for m, leaves in fresh.items() for n in leaves if n not in source.get(m, {}))
  only_source = sorted(
    f"{m}/{n}" for m, leaves in source.items() for n in leaves if n not in fresh.get(m, {})
  )
  if only_fresh or only_source:
    ours, theirs = ", ".join(only_fresh[:3]) or "none", ", ".join(only_source[:3]) or "none"
    raise ValueError(
      f"train.init_from={init_from!r} is another architecture: {kind} only this config has: {ours}; only "
      f"the source run has: {theirs}. Use the source run's model and input settings (its config.json)."
    )
  merged, kept = {}, []
  for module, leaves in fresh.items():
    merged[module] = {}
    for name, value in leaves.items():
      theirs = source[module][name]
      if theirs.shape == value.shape:
        merged[module][name] = theirs.astype(value.dtype)
      elif module == head:
        merged[module][name] = value
        kept.append(f"{module}/{name}")
      else:
        raise ValueError(
          f"train.init_from={init_from!r}: its {module}/{name} is {theirs.shape}, this config's is "
          f"{value.shape}; only the class projection may change shape (dataset.num_classes)."
        )
  return merged, kept


def warm_start(
  fresh_params: dict,
  fresh_state: dict,
  source_params: dict,
  source_state: dict,
  model_name: str,
  init_from: str,
) -> tuple[dict, dict]:
  """(params, state) of the new run: the source's, with a fresh head where the class count differs."""
  head = f"{model_name}/classifier"
  params, kept = _merge("parameters", fresh_params, source_params, head, init_from)
  state, _ = _merge("state", fresh_state, source_state, head, init_from)
  if kept:
    logging.info(
      "Started from %s with a new head (%s): another number of classes.", init_from, ", ".join(kept)
    )
  else:
    logging.info("Started from the parameters of %s.", init_from)
  return params, state


def start_from(train_state: Any, source: Any, optimizer, init_from: str, model_name: str, sharding) -> Any:
  """`train_state` (fresh, step 0) with the parameters and state of `source` (a `train.Run`) and a fresh
  optimizer state; laid out by `sharding`."""
  params, state = warm_start(
    train_state.params, train_state.state, source.state.params, source.state.state, model_name, init_from
  )
  params, state = jax.device_put((params, state), sharding)
  opt_state = jax.jit(optimizer.init, out_shardings=sharding)(params)
  return train_state._replace(params=params, state=state, opt_state=opt_state)
