"""Point-cloud batches from in-memory clouds: the paper's ModelNet40 preprocessing, the batch contract.

Preprocessing (Jaegle et al. 2021, ModelNet40): every cloud is zero-centred. In training each point's
xyz is scaled by its own factor drawn uniformly from [0.99, 1.01] (`augment.point_scale`; one factor per
point, the same on its three axes), then the cloud is zero-centred again and normalised to the unit cube:
divided by its largest absolute coordinate, so it spans [-1, 1] on its longest axis (the range the front
end's Fourier features assume). At eval only the deterministic part runs: zero-centre and normalise.
Extra per-point channels (normals) pass through unchanged.

Randomness: the train example at global stream position g = step * global_batch + i draws its scales
from a NumPy generator seeded by (config.seed, g) alone, so it is the same on any number of processes and
devices and after a resume. Batches: step s's global batch is the positions [s * b, (s + 1) * b) of an
endless sequence of seeded epoch permutations (config.seed, epoch); each process builds only its own
slice of it. Eval: the split in order, each process its slice of every global batch, the last batch
padded and masked (`eval_mask`), so every example is counted once.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np

from perceiver_jax.data import shares

Batch = dict[str, np.ndarray]

_AUGMENT = 1  # Folded into the per-example seeds, apart from the epoch permutations' (seed, epoch).


def normalize(clouds: np.ndarray) -> np.ndarray:
  """Zero-mean and unit-cube normalisation of the xyz of clouds [..., P, 3 + E] (float32, same shape)."""
  clouds = np.array(clouds, np.float32)
  xyz = clouds[..., :3] - clouds[..., :3].mean(axis=-2, keepdims=True)
  extent = np.abs(xyz).max(axis=(-2, -1), keepdims=True)
  clouds[..., :3] = xyz / np.maximum(extent, 1e-12)
  return clouds


def augment(cloud: np.ndarray, rng: np.random.Generator, scale_range: tuple[float, float]) -> np.ndarray:
  """One training cloud [P, 3 + E]: zero-centre, per-point scales in `scale_range`, then `normalize`."""
  cloud = np.array(cloud, np.float32)
  xyz = cloud[:, :3] - cloud[:, :3].mean(axis=0)
  scales = rng.uniform(scale_range[0], scale_range[1], size=(len(cloud), 1)).astype(np.float32)
  cloud[:, :3] = xyz * scales
  return normalize(cloud)


def train_batches(
  clouds: np.ndarray, labels: np.ndarray, config: ml_collections.ConfigDict, start_step: int = 0
) -> Iterator[Batch]:
  """This process's share of every global train batch from `start_step` on, forever.

  Args:
    clouds: float32 [n, P, 3 + E], the whole train split (raw: preprocessing happens here).
    labels: int [n].

  Yields:
    {'inputs': float32 [b, P, 3 + E], 'label': int32 [b]}.
  """
  global_batch, scale_range = config.train.global_batch_size, tuple(config.augment.point_scale)
  step = start_step
  while True:
    index, positions = shares.shuffled_positions(config.seed, step, global_batch, len(labels))
    inputs = np.stack(
      [
        augment(clouds[i], np.random.default_rng([config.seed, _AUGMENT, int(g)]), scale_range)
        for i, g in zip(index, positions, strict=True)
      ]
    )
    yield {"inputs": inputs, "label": labels[index].astype(np.int32)}
    step += 1


def eval_batches(
  clouds: np.ndarray, labels: np.ndarray, config: ml_collections.ConfigDict
) -> Iterator[Batch]:
  """This process's share of the eval split, once: zero-centred and normalised, padded and masked.

  Yields:
    {'inputs': float32 [b, P, 3 + E], 'label': int32 [b], 'eval_mask': bool [b]}.
  """
  for index, mask in shares.eval_positions(len(labels), config.train.eval_batch_size):
    yield {"inputs": normalize(clouds[index]), "label": labels[index].astype(np.int32), "eval_mask": mask}
