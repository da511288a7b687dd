"""The one place that builds the optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

import jax
import ml_collections
import optax

OPTIMIZERS = ("lamb", "adamw", "sgd")
SCHEDULES = ("step", "cosine", "constant", "constant_cosine")


def decay_mask(params):
  """True for weights that take weight decay: matrices and embeddings, not biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """The learning rate per step.

  `step`: the paper's division by `decay_factor` at `decay_epochs`; `cosine`: to zero at the end;
  `constant_cosine` (the official Perceiver code's): flat for `constant_fraction` of `total_steps`, then a
  cosine to zero at the end; `constant`: flat.
  """
  opt = config.optimizer
  lr, warmup = opt.learning_rate, opt.warmup_steps
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={opt.schedule!r} must be one of {SCHEDULES}.")
  if lr <= 0 or warmup < 0:
    raise ValueError(f"optimizer.learning_rate={lr} must be positive, optimizer.warmup_steps={warmup} >= 0.")
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), end_value=0.0)
  if opt.schedule == "constant_cosine":
    fraction = opt.constant_fraction
    if not 0 <= fraction < 1:
      raise ValueError(f"optimizer.constant_fraction={fraction} must be in [0, 1).")
    flat = max(int(round(fraction * total_steps)), warmup)
    cosine = optax.cosine_decay_schedule(lr, max(total_steps - flat, 1), alpha=0.0)
    main = optax.join_schedules([optax.constant_schedule(lr), cosine], [flat])
  elif opt.schedule == "step":
    boundaries = {int(round(e * steps_per_epoch)): opt.decay_factor for e in opt.decay_epochs}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    main = optax.constant_schedule(lr)
  if not warmup:
    return main
  # The step boundaries stay in absolute steps: the main schedule sees the global step.
  return lambda step: jax.numpy.where(step < warmup, lr * step / warmup, main(step))


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clipping, then LAMB / AdamW / SGD with weight decay masked off biases and norms."""
  opt = config.optimizer
  schedule = make_schedule(config, steps_per_epoch, total_steps)
  if opt.name == "lamb":
    core = optax.lamb(
      schedule, b1=opt.b1, b2=opt.b2, eps=1e-6, weight_decay=opt.weight_decay, mask=decay_mask
    )
  elif opt.name == "adamw":
    core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask)
  elif opt.name == "sgd":
    core = optax.chain(
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=opt.b1, nesterov=True),
    )
  else:
    raise ValueError(f"optimizer.name={opt.name!r} must be one of {OPTIMIZERS}.")
  if opt.clip_global_norm:
    if opt.clip_global_norm < 0:
      raise ValueError(f"optimizer.clip_global_norm={opt.clip_global_norm} must be positive (or 0 for none).")
    core = optax.chain(optax.clip_by_global_norm(opt.clip_global_norm), core)
  return core, schedule
