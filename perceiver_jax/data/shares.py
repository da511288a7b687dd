"""This process's share of every global batch, for sources that index their examples on the host.

A global batch of B examples is split into `jax.process_count()` consecutive shares of b = B / processes,
process p taking positions [p b, (p + 1) b); so what a process reads depends only on the step and its
index, and resumed or re-sharded runs read the same examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import numpy as np


def local_share(global_batch_size: int) -> tuple[int, int]:
  """(b, offset): this process's share of a global batch and where it starts in it."""
  count = jax.process_count()
  if global_batch_size % count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by {count} processes.")
  local = global_batch_size // count
  return local, jax.process_index() * local


def shuffled_positions(seed: int, step: int, global_batch_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(example indices, global stream positions), int64 [b] each, of this process's share at `step`.

  The train stream is an endless sequence of epochs, each a permutation of the n examples seeded by (seed,
  epoch): position g of the stream is example permutation_{g // n}[g % n].
  """
  local, offset = local_share(global_batch_size)
  positions = np.arange(step * global_batch_size + offset, step * global_batch_size + offset + local)
  epochs, within = np.divmod(positions, n)
  index = np.empty(local, np.int64)
  for epoch in np.unique(epochs):
    order = np.random.default_rng([seed, int(epoch)]).permutation(n)
    index[epochs == epoch] = order[within[epochs == epoch]]
  return index, positions


def eval_positions(n: int, global_batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, eval_mask) of this process's share of every eval batch: the split once, in order.

  The last batch is padded by repeating the last example; eval_mask is False there, so each of the n
  examples counts exactly once across processes, and every process yields the same number of batches.
  """
  local, offset = local_share(global_batch_size)
  for start in range(0, n, global_batch_size):
    index = np.arange(start + offset, start + offset + local)
    yield np.minimum(index, n - 1), index < n


def stacked(make_example: Callable[[int], dict], indices) -> dict:
  """The examples with these global indices, stacked leaf by leaf: a batch [len(indices), ...]."""
  return jax.tree.map(lambda *xs: np.stack(xs), *[make_example(int(i)) for i in indices])


def indexed_train_batches(
  make_batch: Callable[[range], dict], global_batch_size: int, start_step: int = 0
) -> Iterator[dict]:
  """A source that makes any train example from its global index: this process's share, step after step.

  Step s holds the examples s B .. s B + B - 1 of the stream (B the global batch); `make_batch(indices)` makes
  this process's slice of them, so a resumed run (start_step) and any process count read the same examples.
  """
  local, offset = local_share(global_batch_size)
  step = start_step
  while True:
    first = step * global_batch_size + offset
    yield make_batch(range(first, first + local))
    step += 1


def indexed_eval_batches(
  make_batch: Callable[[np.ndarray], dict], n: int, global_batch_size: int
) -> Iterator[dict]:
  """Every one of the `n` eval examples once across processes, in whole batches with their `eval_mask`."""
  for index, mask in eval_positions(n, global_batch_size):
    batch = make_batch(index)
    batch["eval_mask"] = mask
    yield batch
