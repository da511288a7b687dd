"""ModelNet40 (Wu et al. 2015) from its manual download, prepared once as a TFDS dataset, then batched.

Two forms researchers hold, both read by `prepare_modelnet40` (scripts/prepare_modelnet40.py):
- PointNet's `modelnet40_ply_hdf5_2048` (unpacked, or its zip): `ply_data_train*.h5` and
  `ply_data_test*.h5` with `data` float32 [n, 2048, 3], `label` [n, 1] and optionally `normal`
  [n, 2048, 3]; class names in `shape_names.txt`. Read with h5py, in file order.
- The original meshes `ModelNet40/<class>/{train,test}/<class>_NNNN.off` (unpacked, or `ModelNet40.zip`),
  read with trimesh (which also reads the malformed headers some files carry, `OFF490 518 0`) and
  sampled to `num_points` surface points, area-weighted (trimesh.sample.sample_surface), with the face
  normals of the sampled faces; the seed is (`seed`, CRC-32 of the file's `<class>/<split>/<name>`),
  so the same file always gives the same points. Classes: the 40 directory names, sorted.
A file that cannot be read is counted and named, and left out; the rest is prepared. The result is the
TFDS dataset `modelnet40` (features `points` float32 [P, 3], `label`, and `normal` [P, 3] when every
example has normals; splits `train`, `test`, in source order) under `data_dir`, which may be `gs://`.

Batches: each host reads both splits into memory (9,843 x 2,048 x 3 float32 is 242 MB) and batches them
as `perceiver_jax.data.points` does: the paper's preprocessing from per-example seeds, per-process
shares of every global batch, exact resume, every eval example counted once. `dataset.point_channels=3`
appends the normals to xyz.
"""

from __future__ import annotations

import functools
import io
import os
import re
import zipfile
import zlib
from collections.abc import Iterator

import ml_collections
import numpy as np
from etils import epath

from perceiver_jax.data import points

NAME = "modelnet40"
VERSION = "1.0.0"
SPLITS = ("train", "test")
HOWTO = (
  "Download PointNet's modelnet40_ply_hdf5_2048.zip (https://shapenet.cs.stanford.edu/media/"
  "modelnet40_ply_hdf5_2048.zip) or the meshes ModelNet40.zip (https://modelnet.cs.princeton.edu) into "
  "one directory (zipped or unpacked), then run `python scripts/prepare_modelnet40.py --manual_dir=THAT_DIR "
  "--data_dir=DATA_DIR` once."
)
_H5 = re.compile(r"(?:^|/)ply_data_(train|test)\d*\.h5$")
_OFF = re.compile(r"(?:^|/)([^/]+)/(train|test)/([^/]+\.off)$")


# ---------------------------------------------------------------------------------------------------------
# The manual download: files in a directory or in zips, by relative name.


def _walk(folder: epath.Path) -> Iterator[epath.Path]:
  """Every file under `folder`, in sorted order (epath's rglob refuses `**` on some backends)."""
  for path in sorted(folder.iterdir()):
    if path.is_dir():
      yield from _walk(path)
    else:
      yield path


class _Files:
  """The files under `manual_dir`, unpacked or inside its zips: relative names and their bytes."""

  def __init__(self, manual_dir: str):
    root = epath.Path(manual_dir)
    if not root.is_dir():
      raise FileNotFoundError(f"--manual_dir={manual_dir!r} is not a directory. {HOWTO}")
    self.root, self.files, self.zips = root, {}, {}
    for path in _walk(root):
      rel = path.relative_to(root).as_posix()
      if rel.endswith(".zip"):
        try:
          archive = zipfile.ZipFile(path.open("rb"))  # Kept open: ModelNet40.zip holds 12,311 meshes.
        except zipfile.BadZipFile:
          continue  # Not a zip after all: nothing of ModelNet40 in it.
        self.zips[rel] = archive
        for info in archive.infolist():
          if not info.is_dir() and "__MACOSX/" not in info.filename:  # macOS's resource forks: no data.
            self.files[f"{rel}/{info.filename}"] = (rel, info.filename)
      else:
        self.files[rel] = (path, None)

  def read(self, name: str) -> bytes:
    where, member = self.files[name]
    return where.read_bytes() if member is None else self.zips[where].read(member)

  def matching(self, pattern: re.Pattern) -> list[tuple[str, re.Match]]:
    return [(name, m) for name in sorted(self.files) if (m := pattern.search(name))]


# ---------------------------------------------------------------------------------------------------------
# Readers: (split -> list of examples, class names, problems).


def read_hdf5(files: _Files) -> tuple[dict[str, list[dict]], list[str], list[str]]:
  """PointNet's HDF5 files -> ({split: examples}, class names, unreadable files with why)."""
  import h5py

  found = files.matching(_H5)
  names_file = [n for n in files.files if n.rsplit("/", 1)[-1] == "shape_names.txt"]
  if not names_file:
    raise FileNotFoundError(
      f"{files.root} has ply_data_*.h5 files but no shape_names.txt next to them. {HOWTO}"
    )
  classes = [line.strip() for line in files.read(names_file[0]).decode().splitlines() if line.strip()]
  examples, problems = {s: [] for s in SPLITS}, []
  for name, match in found:
    try:
      with h5py.File(io.BytesIO(files.read(name)), "r") as f:
        data = np.asarray(f["data"], np.float32)
        labels = np.asarray(f["label"]).reshape(-1).astype(np.int64)
        normal = np.asarray(f["normal"], np.float32) if "normal" in f else None
      if data.ndim != 3 or data.shape[-1] != 3 or len(labels) != len(data):
        raise ValueError(f"data {data.shape} and label {labels.shape} are not [n, P, 3] and [n, 1]")
      if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(classes):
        raise ValueError(f"labels outside 0..{len(classes) - 1}")
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported and left out.
      problems.append(f"{name}: {type(error).__name__}: {error}")
      continue
    for i in range(len(data)):
      example = {"points": data[i], "label": int(labels[i])}
      if normal is not None:
        example["normal"] = normal[i]
      examples[match.group(1)].append(example)
  return examples, classes, problems


def sample_mesh(off: bytes, num_points: int, seed) -> tuple[np.ndarray, np.ndarray]:
  """An OFF mesh's bytes -> (points float32 [P, 3], their faces' normals float32 [P, 3]), area-weighted."""
  import trimesh

  mesh = trimesh.load(io.BytesIO(off), file_type="off", process=False)
  if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or mesh.area <= 0:
    raise ValueError("no faces with area")
  xyz, faces = trimesh.sample.sample_surface(mesh, num_points, seed=np.random.default_rng(seed))
  return xyz.astype(np.float32), mesh.face_normals[faces].astype(np.float32)


def read_off(files: _Files, num_points: int, seed: int) -> tuple[dict[str, list[dict]], list[str], list[str]]:
  """The OFF meshes -> ({split: examples}, class names, unreadable files with why)."""
  found = files.matching(_OFF)
  classes = sorted({m.group(1) for _, m in found})
  examples, problems = {s: [] for s in SPLITS}, []
  for name, match in found:
    cls, split, stem = match.groups()
    try:
      xyz, normal = sample_mesh(
        files.read(name), num_points, [seed, zlib.crc32(f"{cls}/{split}/{stem}".encode())]
      )
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported and left out.
      problems.append(f"{name}: {type(error).__name__}: {error}")
      continue
    examples[split].append({"points": xyz, "normal": normal, "label": classes.index(cls)})
  return examples, classes, problems


# ---------------------------------------------------------------------------------------------------------
# Preparing the TFDS dataset.


def prepare_modelnet40(
  manual_dir: str, data_dir: str, source: str = "auto", num_points: int = 2048, seed: int = 0
) -> tuple[object, dict[str, int], list[str]]:
  """Builds TFDS `modelnet40` in `data_dir` from `manual_dir`; returns (builder, split sizes, problems).

  Args:
    source: 'hdf5', 'off', or 'auto' (the HDF5 files if there are any, else the meshes).
    num_points, seed: the meshes' surface samples (the HDF5 files come with 2,048 points each).

  Raises:
    FileNotFoundError: `manual_dir` is missing or holds neither form (the message says what to do).
  """
  if source not in ("auto", "hdf5", "off"):
    raise ValueError(f"source={source!r} must be 'auto', 'hdf5' or 'off'.")
  files = _Files(manual_dir)
  has_h5, has_off = bool(files.matching(_H5)), bool(files.matching(_OFF))
  if source == "auto":
    source = "hdf5" if has_h5 else "off"
  if not (has_h5 if source == "hdf5" else has_off):
    want = "ply_data_{train,test}*.h5" if source == "hdf5" else "<class>/{train,test}/*.off"
    raise FileNotFoundError(
      f"--manual_dir={manual_dir!r} holds no ModelNet40 {source} files ({want}, unpacked or zipped). {HOWTO}"
    )
  if source == "hdf5":
    examples, classes, problems = read_hdf5(files)
  else:
    examples, classes, problems = read_off(files, num_points, seed)
  empty = [s for s in SPLITS if not examples[s]]
  if empty:
    raise FileNotFoundError(
      f"--manual_dir={manual_dir!r} gave no readable {' or '.join(empty)} examples "
      f"({len(problems)} unreadable files). {HOWTO}"
    )
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")
  p = len(examples["train"][0]["points"])
  with_normals = all("normal" in e for s in SPLITS for e in examples[s])
  features = {
    "points": tfds.features.Tensor(shape=(p, 3), dtype=np.float32),
    "label": tfds.features.ClassLabel(names=classes),
  }
  if with_normals:
    features["normal"] = tfds.features.Tensor(shape=(p, 3), dtype=np.float32)
  keep = set(features)

  def generate(split):
    for i, example in enumerate(examples[split]):
      yield i, {k: v for k, v in example.items() if k in keep}

  builder = tfds.dataset_builders.store_as_tfds_dataset(
    name=NAME,
    version=VERSION,
    features=tfds.features.FeaturesDict(features),
    split_datasets={s: generate(s) for s in SPLITS},
    data_dir=data_dir,
    description=f"ModelNet40 from {source} ({manual_dir}); {len(problems)} unreadable files left out.",
    disable_shuffling=True,  # Source order: eval batches and reports stay comparable.
  )
  return builder, {s: len(examples[s]) for s in SPLITS}, problems


# ---------------------------------------------------------------------------------------------------------
# Reading the prepared dataset: the data source.


@functools.cache
def _load(data_dir: str, split: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")
  path = epath.Path(data_dir) / NAME / VERSION
  if not (path / "dataset_info.json").exists():
    raise FileNotFoundError(
      f"ModelNet40 is not prepared in dataset.data_dir={data_dir!r} (looked for {os.fspath(path)}). {HOWTO}"
    )
  builder = tfds.builder_from_directory(os.fspath(path))
  if split not in builder.info.splits:
    raise ValueError(f"ModelNet40 has splits {sorted(builder.info.splits.keys())}, not {split!r}.")
  if channels and "normal" not in builder.info.features:
    raise ValueError(
      f"dataset.point_channels={channels} asks for normals, and this ModelNet40 was prepared without "
      "them; set --config.dataset.point_channels=0."
    )
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  clouds = arrays["points"]
  if channels:
    clouds = np.concatenate([clouds, arrays["normal"]], axis=-1)
  return clouds.astype(np.float32), arrays["label"].astype(np.int32)


def _arrays(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  d = config.dataset
  if d.data_dir is None:
    raise FileNotFoundError(f"dataset.data_dir is not set: set --config.dataset.data_dir. {HOWTO}")
  if d.point_channels not in (0, 3):
    raise ValueError(f"dataset.point_channels={d.point_channels} must be 0 (xyz) or 3 (xyz and normals).")
  clouds, labels = _load(d.data_dir, d.train_split if split == "train" else d.eval_split, d.point_channels)
  if clouds.shape[1] != d.num_points:
    raise ValueError(
      f"ModelNet40 in {d.data_dir} has {clouds.shape[1]} points per cloud, but dataset.num_points="
      f"{d.num_points}; set --config.dataset.num_points={clouds.shape[1]}."
    )
  return clouds, labels


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  return len(_arrays(config, split)[1])


def train_batches(config: ml_collections.ConfigDict, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  return points.train_batches(*_arrays(config, "train"), config, start_step)


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  return points.eval_batches(*_arrays(config, "eval"), config)
