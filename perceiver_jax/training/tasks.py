"""Tasks: the loss, the train metrics and the eval metrics of `config.task` (data.spec.TASKS).

- `single_label`: softmax cross-entropy on class indices [B] or soft labels [B, K] (MixUp/CutMix), label
  smoothing on the targets; train `top1`; eval `top1`, `top5`, `loss` (sums over the real examples,
  psum-ed over devices: every example counted once).
- `multi_label`: sigmoid cross-entropy per class on multi-hot labels [B, K] (summed over the classes,
  averaged over the examples; label smoothing moves each target towards 1/2 by half the smoothing); eval
  `mAP`: the mean, over the classes with at least one positive among all eval examples, of scikit-learn's
  average precision of that class's column of the [examples, classes] scores; `per_class_ap` (None where a
  class has no positive) and `loss`. A per-batch sum cannot give it: the eval step gathers every example's
  scores, labels and eval_mask to every process, and the host keeps the real examples.
The step functions (train.py) call `loss`, `train_metrics`, `eval_sums` and `scores` per device; the host
calls `summarize` once per evaluation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float):
  """Softmax cross-entropy per example [B]; labels are int [B] or soft [B, num_classes]."""
  targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)  # [B]


def sigmoid_cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-class sigmoid cross-entropy summed over the classes, per example [B]; labels multi-hot [B, K]."""
  targets = labels.astype(jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets), axis=-1)


def top_k_correct(logits, labels, k: int):
  """bool [B]: is the label among the k largest logits (ties broken by index, as lax.top_k does)."""
  labels = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
  _, top = lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1)


def loss(task: str, logits, labels, num_classes: int, label_smoothing: float):
  """The task's loss per example [B]."""
  if task == MULTI_LABEL:
    return sigmoid_cross_entropy(logits, labels, label_smoothing)
  return cross_entropy(logits, labels, num_classes, label_smoothing)


def train_metrics(task: str, logits, labels) -> dict[str, jax.Array]:
  """Per-device means of the task's train metrics (besides the loss)."""
  if task == MULTI_LABEL:
    return {}
  return {"top1": jnp.mean(top_k_correct(logits, labels, 1))}


def eval_sums(task: str, logits, labels, weight, num_classes: int) -> dict[str, jax.Array]:
  """Sums over the examples of one device's eval batch, each weighted by `weight` [B] (the eval_mask)."""
  sums = {"loss": jnp.sum(loss(task, logits, labels, num_classes, 0.0) * weight), "count": jnp.sum(weight)}
  if task == SINGLE_LABEL:
    sums["top1"] = jnp.sum(top_k_correct(logits, labels, 1) * weight)
    sums["top5"] = jnp.sum(top_k_correct(logits, labels, min(5, num_classes)) * weight)
  return sums


def needs_scores(task: str) -> bool:
  """Whether the task's eval metrics need every example's scores (not only per-batch sums)."""
  return task == MULTI_LABEL


def scores(task: str, logits):
  """Per-class scores [B, K]: sigmoid probabilities (multi-label) or softmax probabilities."""
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if task == MULTI_LABEL else jax.nn.softmax(logits, axis=-1)


def average_windows(task: str, logits):
  """Logits [B, W, K] of W windows of each example -> [B, K] logits whose scores are the windows' mean.

  The paper averages the scores of an AudioSet clip's 16 windows: multi-label, the mean sigmoid p becomes
  the logit log p - log(1 - p); single-label, the mean softmax p becomes log p (softmax(log p) = p). The
  eval loss is then that of the averaged scores.
  """
  probs = jnp.mean(scores(task, logits), axis=1)  # [B, K]
  tiny = jnp.finfo(jnp.float32).tiny
  if task == MULTI_LABEL:
    return jnp.log(jnp.maximum(probs, tiny)) - jnp.log(jnp.maximum(1.0 - probs, tiny))
  return jnp.log(jnp.maximum(probs, tiny))


def average_precisions(scores: np.ndarray, labels: np.ndarray) -> list[float | None]:
  """scikit-learn's average precision of each class: scores and multi-hot labels are [examples, classes].

  None for a class with no positive example (its AP is undefined, and it is left out of the mean).
  """
  from sklearn.metrics import average_precision_score

  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.shape != labels.shape or scores.ndim != 2:
    raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [examples, classes].")
  positives = labels > 0.5
  return [
    float(average_precision_score(positives[:, k], scores[:, k])) if positives[:, k].any() else None
    for k in range(scores.shape[1])
  ]


def _mean_of_defined(aps: list[float | None]) -> float:
  """The mean of the per-class APs that are defined (classes with a positive); NaN when none is."""
  defined = [ap for ap in aps if ap is not None]
  return float(np.mean(defined)) if defined else float("nan")


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """The mean of `average_precisions` over the classes with at least one positive (as `summarize`)."""
  value = _mean_of_defined(average_precisions(scores, labels))
  if np.isnan(value):
    raise ValueError("No class has a positive eval example: the mAP is undefined.")
  return value


def summarize(task: str, totals: dict[str, Any], scores=None, labels=None) -> dict[str, Any]:
  """The eval metrics from the summed `totals` (and, where needed, the real examples' scores and labels)."""
  count = float(totals["count"])
  if count == 0:
    raise ValueError("The eval split has no real example; check dataset.eval_split.")
  metrics: dict[str, Any] = {}
  if task == MULTI_LABEL:
    aps = average_precisions(scores, labels)
    metrics["mAP"] = _mean_of_defined(aps)  # NaN, logged, rather than a crash at an eval with no positive.
  else:
    metrics["top1"] = float(totals["top1"]) / count
    metrics["top5"] = float(totals["top5"]) / count
  metrics["loss"] = float(totals["loss"]) / count
  metrics["count"] = int(count)
  if task == MULTI_LABEL:
    metrics["per_class_ap"] = aps
  return metrics


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
  """The metrics that are numbers (what logs, metrics.jsonl and TensorBoard take)."""
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def describe(metrics: dict[str, Any]) -> str:
  """'top1 0.9750 top5 1.0000 loss 0.1234' for a log line: the scalar metrics but the count."""
  return " ".join(f"{k} {v:.4f}" for k, v in scalars(metrics).items() if k != "count")
