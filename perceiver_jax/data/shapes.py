"""`shapes`: the embedded point-cloud default, ten seeded 3-D shape classes (nothing is downloaded).

Each class is a trimesh surface: sphere, cube, cylinder, cone, torus, then their near twins: ellipsoid (a
sphere squashed to 0.7 on one axis), slab (a 1 x 1 x 0.6 box), capsule (a cylinder with round ends),
pyramid (a cone of four sections), ring (a short thick-walled tube). `dataset.num_classes` (2..10) takes
the first classes: 5 is the base shapes alone. An example is `dataset.num_points` points sampled on the
surface, area-weighted (trimesh.sample.sample_surface), stretched by a random factor in [0.92, 1.08] per
axis (less than the twins differ by), randomly rotated (uniform over rotations), scaled by a random size
in [0.5, 2] and shifted by a random offset, plus Gaussian noise of 2% of the shape's size.
Example i of split s is a pure function of (`dataset.data_seed`, s, i): the sets are the same on every
host and every run. The batches and the paper's preprocessing are `perceiver_jax.data.points`'.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import ml_collections
import numpy as np

from perceiver_jax.data import points

# The five base shapes first, then their near twins in the same order: `dataset.num_classes=5` is the
# easy half (the base shapes alone).
CLASSES = (
  "sphere",
  "cube",
  "cylinder",
  "cone",
  "torus",
  "ellipsoid",
  "slab",
  "capsule",
  "pyramid",
  "ring",
)
_SPLITS = {"train": 0, "eval": 1}


@functools.cache
def _meshes() -> tuple:
  import trimesh

  creation = trimesh.creation
  sphere = creation.icosphere(subdivisions=3)
  ellipsoid = sphere.copy()
  ellipsoid.apply_scale((1.0, 1.0, 0.7))
  meshes = {
    "sphere": sphere,
    "ellipsoid": ellipsoid,
    "cube": creation.box(extents=(1.0, 1.0, 1.0)),
    "slab": creation.box(extents=(1.0, 1.0, 0.6)),
    "cylinder": creation.cylinder(radius=0.5, height=1.2, sections=32),
    "capsule": creation.capsule(height=0.7, radius=0.5, count=(16, 16)),
    "cone": creation.cone(radius=0.6, height=1.2, sections=32),
    "pyramid": creation.cone(radius=0.6, height=1.2, sections=4),
    "torus": creation.torus(major_radius=0.7, minor_radius=0.25),
    "ring": creation.annulus(r_min=0.45, r_max=0.7, height=0.5),
  }
  return tuple(meshes[name] for name in CLASSES)


def _rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random rotation [3, 3] (QR of a Gaussian matrix, signs fixed, determinant +1)."""
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def sample(label: int, num_points: int, rng: np.random.Generator) -> np.ndarray:
  """One cloud of class `label`: float32 [num_points, 3], in a random pose, size and place, noisy."""
  import trimesh

  mesh = _meshes()[label]
  xyz, _ = trimesh.sample.sample_surface(mesh, num_points, seed=rng)
  xyz = xyz - mesh.bounds.mean(axis=0)
  xyz = xyz * rng.uniform(0.92, 1.08, size=3)  # [P, 3]: a stretch less than the near twins differ by
  size = rng.uniform(0.5, 2.0)
  noise = rng.normal(0.0, 0.02 * size * np.abs(xyz).max(), size=xyz.shape)
  xyz = xyz @ _rotation(rng).T * size + rng.uniform(-1.0, 1.0, size=3) + noise
  return xyz.astype(np.float32)


@functools.cache
def _split(
  split: str, num_examples: int, num_points: int, data_seed: int, num_classes: int = len(CLASSES)
) -> tuple[np.ndarray, np.ndarray]:
  labels = np.arange(num_examples) % num_classes
  clouds = np.stack(
    [
      sample(int(label), num_points, np.random.default_rng([data_seed, _SPLITS[split], i]))
      for i, label in enumerate(labels)
    ]
  )
  return clouds, labels.astype(np.int32)


def _arrays(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  d = config.dataset
  if not 2 <= d.num_classes <= len(CLASSES) or d.point_channels != 0:
    raise ValueError(
      f"shapes has 2 to {len(CLASSES)} classes of xyz points, but dataset.num_classes={d.num_classes} and "
      f"dataset.point_channels={d.point_channels}; set them to at most {len(CLASSES)} and 0."
    )
  num = d.num_train_examples if split == "train" else d.num_eval_examples
  return _split(split, num, d.num_points, d.data_seed, d.num_classes)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  return config.dataset.num_train_examples if split == "train" else config.dataset.num_eval_examples


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  return points.train_batches(*_arrays(config, "train"), config, start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  return points.eval_batches(*_arrays(config, "eval"), config)
