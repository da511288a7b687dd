"""ModelNet40 from fake files in both real forms, through the real prepare script, reader and batches."""

import io
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
from conftest import ROOT, load_config

from perceiver_jax import data
from perceiver_jax.data import modelnet40

CLASSES = ("airplane", "bathtub", "bed")
POINTS = 32


def _h5(data_, labels, normal=None) -> bytes:
  buffer = io.BytesIO()
  with h5py.File(buffer, "w") as f:
    f["data"] = data_
    f["label"] = labels.reshape(-1, 1).astype(np.uint8)
    if normal is not None:
      f["normal"] = normal
  return buffer.getvalue()


def write_hdf5(root, rng):
  """PointNet's layout, zipped: 2 train files (5 + 4 clouds), 1 test file (4), 1 corrupt train file."""
  clouds = {}
  with zipfile.ZipFile(root / "modelnet40_ply_hdf5_2048.zip", "w") as z:
    d = "modelnet40_ply_hdf5_2048/"
    z.writestr(d + "shape_names.txt", "\n".join(CLASSES) + "\n")
    for name, n in (("ply_data_train0.h5", 5), ("ply_data_train1.h5", 4), ("ply_data_test0.h5", 4)):
      x = rng.normal(size=(n, POINTS, 3)).astype(np.float32)
      y = rng.integers(0, len(CLASSES), n)
      clouds[name] = (x, y)
      z.writestr(d + name, _h5(x, y, normal=rng.normal(size=(n, POINTS, 3)).astype(np.float32)))
    z.writestr(d + "ply_data_train2.h5", b"\x89HDF\r\n not really")
  return clouds


TETRA = "4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"


def write_off(root):
  """ModelNet40's tree, unpacked: 3 classes x (2 train, 1 test), one malformed header, one corrupt file."""
  for k, cls in enumerate(CLASSES):
    for split, count in (("train", 2), ("test", 1)):
      folder = root / "ModelNet40" / cls / split
      folder.mkdir(parents=True)
      for i in range(count):
        verts = TETRA.replace("1 0 0", f"{1 + k + i} 0 0")
        header = "OFF" if (k, split, i) == (1, "train", 0) else "OFF\n"  # `OFF4 4 0`: malformed.
        (folder / f"{cls}_{i + 1:04d}.off").write_text(header + verts)
  (root / "ModelNet40" / "bed" / "train" / "bed_0003.off").write_text("OFF\n8 12 0\n0 0 0\n1 2\n")


def test_hdf5_zip_through_the_reader_and_the_batches(tmp_path):
  clouds = write_hdf5(tmp_path, np.random.default_rng(0))
  builder, sizes, problems = modelnet40.prepare_modelnet40(str(tmp_path), str(tmp_path / "data"))
  assert sizes == {"train": 9, "test": 4}
  assert len(problems) == 1 and "ply_data_train2.h5" in problems[0]
  assert builder.info.features["label"].names == list(CLASSES) and "normal" in builder.info.features

  config = load_config("modelnet40", f"runlocal,num_points={POINTS},data_dir={str(tmp_path / 'data')!r}")
  config.train.update(global_batch_size=4, eval_batch_size=3)
  assert data.num_examples(config, "train") == 9 and data.num_examples(config, "eval") == 4
  batches = list(data.eval_batches(config))  # Source order, deterministic preprocessing, once each.
  assert [int(b["eval_mask"].sum()) for b in batches] == [3, 1]
  x, y = clouds["ply_data_test0.h5"]
  got = np.concatenate([b["inputs"][b["eval_mask"]] for b in batches])
  centred = x - x.mean(axis=1, keepdims=True)
  np.testing.assert_allclose(got, centred / np.abs(centred).max(axis=(1, 2), keepdims=True), atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([b["label"][b["eval_mask"]] for b in batches]), y)
  train = data.train_batches(config)
  first = [next(train) for _ in range(4)]
  again = next(data.train_batches(config, start_step=3))  # Exact resume, across an epoch boundary.
  np.testing.assert_array_equal(again["inputs"], first[3]["inputs"])
  train_labels = np.concatenate([clouds["ply_data_train0.h5"][1], clouds["ply_data_train1.h5"][1]])
  epoch0 = np.concatenate([first[0]["label"], first[1]["label"], first[2]["label"][:1]])  # Positions 0..8.
  np.testing.assert_array_equal(np.sort(epoch0), np.sort(train_labels))  # One epoch: every cloud once.
  assert first[0]["inputs"].shape == (4, POINTS, 3)
  config.dataset.point_channels = 3  # The normals after xyz.
  modelnet40._load.cache_clear()
  assert next(data.eval_batches(config))["inputs"].shape == (3, POINTS, 6)


@pytest.mark.slow
def test_off_meshes_through_the_prepare_script(tmp_path):
  write_off(tmp_path)
  cmd = [sys.executable, str(ROOT / "scripts" / "prepare_modelnet40.py"), f"--manual_dir={tmp_path}"]
  done = subprocess.run(
    [*cmd, f"--data_dir={tmp_path / 'data'}", "--num_points=16"], capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "{'train': 6, 'test': 3}; 1 unreadable files left out" in done.stdout
  assert "ModelNet40/bed/train/bed_0003.off" in done.stderr
  config = load_config("modelnet40", f"runlocal,num_points=16,data_dir={str(tmp_path / 'data')!r}")
  config.train.update(global_batch_size=2, eval_batch_size=3)
  batch = next(data.eval_batches(config))
  np.testing.assert_array_equal(batch["label"], [0, 1, 2])  # Classes: the sorted directory names.
  # Area-weighted samples of the file's tetrahedron, seeded by its name: the same points every time.
  raw = (tmp_path / "ModelNet40" / "bathtub" / "train" / "bathtub_0001.off").read_bytes()
  assert raw.startswith(b"OFF4 4 0")  # The malformed header was read.
  a, _ = modelnet40.sample_mesh(raw, 16, [0, 1])
  b, _ = modelnet40.sample_mesh(raw, 16, [0, 1])
  np.testing.assert_array_equal(a, b)
  on_faces = np.isclose(a, 0, atol=1e-6).any(axis=1) | np.isclose(a[:, 0] / 2 + a[:, 1] + a[:, 2], 1)
  assert np.all(a >= -1e-6) and on_faces.all()  # On the surface of the tetrahedron with x up to 2.
  # The script's answer to a wrong manual_dir: one line, exit status 1.
  done = subprocess.run(
    [*cmd[:2], f"--manual_dir={tmp_path / 'nowhere'}", "--data_dir=x"],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert "is not a directory" in done.stderr and "prepare_modelnet40.py --manual_dir" in done.stderr


@pytest.mark.parametrize("where", ["nowhere", "empty", "data"])
def test_a_missing_or_wrong_manual_dir_is_one_line_that_says_what_to_do(tmp_path, where):
  (tmp_path / "empty").mkdir()
  (tmp_path / "data" / "modelnet40").mkdir(parents=True)  # A TFDS data_dir is no manual download.
  (tmp_path / "data" / "modelnet40" / "x.tfrecord").write_bytes(b"")
  with pytest.raises(FileNotFoundError) as error:
    modelnet40.prepare_modelnet40(str(tmp_path / where), str(tmp_path / "out"))
  message = str(error.value)
  assert "\n" not in message and str(tmp_path / where) in message
  assert "prepare_modelnet40.py --manual_dir=" in message and "modelnet40_ply_hdf5_2048.zip" in message
  assert not (tmp_path / "out").exists()  # Nothing written.
