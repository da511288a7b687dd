"""A run on gs:// end to end (train, preempt, resume, evaluate, make_tables) against a GCS emulator.

`gcp-storage-emulator` serves a bucket on 127.0.0.1 from this process (in memory). Two layers reach it:
etils `epath` through gcsfs (`EPATH_USE_TF=false`; gcsfs honours `STORAGE_EMULATOR_HOST`), which writes
config.json, metrics.jsonl, results.json, the lock, eval_results.json, the tables and orbax's checkpoint
metadata; and tensorstore's GCS driver (`TENSORSTORE_GCS_HTTP_URL`), which writes the checkpoints' arrays.
TensorFlow's own GCS filesystem (TensorBoard events, tf.data) has its endpoint compiled in and cannot be
sent to an emulator: those layers are checked on TensorFlow's in-memory `ram://` filesystem instead.
"""

import ast
import os
import signal
import socket
from http import HTTPStatus

import jax
import pytest
from conftest import ROOT, load_config
from etils import epath

from perceiver_jax import data
from perceiver_jax.tools import tables
from perceiver_jax.training import checkpoint, metric_writer, run_files, train

BUCKET = "runs"
TINY = (
  "runlocal,num_latents=8,latent_channels=16,num_cross_attends=1,num_latent_transformers=1,"
  "num_self_attends_per_block=1,num_self_heads=2,num_steps=12,checkpoint.every=4,keep=3,log_every=4,"
  "eval_every=12"
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _clear_gcs_clients() -> None:
  import gcsfs

  gcsfs.GCSFileSystem.clear_instance_cache()  # fsspec keeps a client per set of arguments ...
  epath.backend.fsspec_backend._get_filesystem.cache_clear()  # noqa: SLF001  ... and so does epath,
  epath.gpath._is_tf_installed.cache_clear()  # noqa: SLF001  which also caches EPATH_USE_TF's first value.


def _move_to(request, response, storage, *args, **kwargs):
  """GCS's `objects.moveTo` (an atomic rename, which gcsfs uses), missing from the emulator: a copy, then
  a delete of the source, in the emulator's one request thread."""
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  bucket, source, target = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
  try:
    moved = objects._copy(request.base_url, storage, bucket, source, bucket, target)  # noqa: SLF001
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  objects._delete(storage, bucket, source)  # noqa: SLF001
  response.json(moved)


def _with_generation(download):
  """The emulator's media download, plus the `x-goog-generation` header that GCS sends with every object's
  bytes: tensorstore takes the object's generation from it (without it: "Malformed StorageGeneration")."""

  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  return handler


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A bucket gs://runs on an emulator of this process; epath and tensorstore pointed at it."""
  from gcp_storage_emulator import server as emulator
  from gcp_storage_emulator.server import create_server

  move_route = (
    rf"^{emulator.settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
    r"(?P<dest_object_id>.*[^/]+)$",
    {emulator.POST: _move_to},
  )
  from gcp_storage_emulator.handlers import objects

  handlers, download = emulator.HANDLERS, objects.download
  objects.download = _with_generation(download)  # `objects.get` with alt=media calls it by this name.
  routed = [(r, {m: objects.download if h is download else h for m, h in by.items()}) for r, by in handlers]
  emulator.HANDLERS = (move_route, *routed)  # Read by the router at every request.
  port = _free_port()
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  endpoint = f"http://127.0.0.1:{port}"
  env = {
    "STORAGE_EMULATOR_HOST": endpoint,  # gcsfs (and google-cloud-storage).
    "TENSORSTORE_GCS_HTTP_URL": endpoint,  # orbax's arrays.
    "EPATH_USE_TF": "false",  # epath through gcsfs: tf.io.gfile would go to the real endpoint.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # Else gcsfs spends 60 s on a gRPC bucket-type probe.
    "NO_GCE_CHECK": "true",  # Else google-auth probes the metadata server first.
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  _clear_gcs_clients()
  # The resume and the evaluation compile the steps again: a persistent cache turns that into a lookup.
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  saved_jax = {k: getattr(jax.config, k) for k in keys}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("gcs_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    yield f"gs://{BUCKET}"
  finally:
    for key, value in saved_jax.items():
      jax.config.update(key, value)
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    _clear_gcs_clients()
    server.stop()
    emulator.HANDLERS, objects.download = handlers, download


def _sigterm_at(monkeypatch, index: int) -> None:
  """Makes the run receive SIGTERM when it draws batch `index` (a preemption mid-run)."""
  original = data.train_batches

  def train_batches(config, start_step=0):
    for i, batch in enumerate(original(config, start_step=start_step), start_step):
      if i == index:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(data, "train_batches", train_batches)


def _objects(prefix: str) -> list[str]:
  """The objects under gs:// `prefix`, relative to it, as the emulator holds them (listed by gcsfs)."""
  import gcsfs

  key = prefix.removeprefix("gs://")
  return sorted(name.removeprefix(key + "/") for name in gcsfs.GCSFileSystem().find(key))


@pytest.mark.slow
def test_train_preempt_resume_evaluate_tables_on_gcs(gcs, tmp_path, monkeypatch):
  config = load_config("digits", TINY)
  reference = train.train_and_evaluate(config, str(tmp_path / "local"), tensorboard=False)

  workdir = f"{gcs}/digits/ff"
  assert "://" in os.fspath(checkpoint.directory(workdir))
  with monkeypatch.context() as m:
    _sigterm_at(m, 6)  # Drawn ahead of its step (prefetch): the run stops at the step boundary after.
    stopped = train.train_and_evaluate(config, workdir, tensorboard=False)
  assert stopped["preempted"] and 4 < stopped["step"] < 12
  manager = checkpoint.make_manager(workdir, read_only=True)
  assert manager.latest_step() == stopped["step"] and 4 in manager.all_steps()
  assert not epath.Path(workdir, run_files.RESULTS).exists()
  stored = _objects(workdir)
  # tensorstore wrote the arrays (OCDBT) and gcsfs the metadata, both into the bucket.
  assert f"checkpoints/{stopped['step']}/default/manifest.ocdbt" in stored
  assert any(p.startswith(f"checkpoints/{stopped['step']}/default/d/") for p in stored)
  assert {"config.json", "metrics.jsonl"} <= set(stored) and "lock" not in stored

  resumed = train.train_and_evaluate(config, workdir, tensorboard=False)
  assert resumed["params_checksum"] == reference["params_checksum"]  # Bitwise the uninterrupted run.
  assert resumed["history"] == reference["history"]
  results = run_files.read_json(epath.Path(workdir) / run_files.RESULTS)
  assert results["params_checksum"] == reference["params_checksum"]
  logged = run_files.read_jsonl(epath.Path(workdir) / run_files.METRICS)
  assert [r["step"] for r in logged] == [4, 8, 12, 12]
  assert logged[-1]["eval_top1"] == reference["eval"]["top1"]

  evaluated = train.evaluate_run(workdir)
  assert evaluated["eval"] == reference["eval"] and evaluated["step"] == 12
  assert evaluated["params_checksum"] == reference["params_checksum"]
  assert run_files.read_json(epath.Path(workdir) / "eval_results.json")["eval"] == reference["eval"]
  run = train.load_run(workdir)
  assert run.step == 12 and checkpoint.params_checksum(run.state.params) == reference["params_checksum"]

  runs = tables.find_runs([gcs])
  assert [r.path for r in runs] == [workdir]
  markdown = tables.write_report(runs, f"{gcs}/tables", gflops_fn=None)
  out = _objects(f"{gcs}/tables")
  assert "tables.md" in out and "curves_digits.png" in out
  assert epath.Path(gcs, "tables", "tables.md").read_text() == markdown
  assert f"{100 * reference['eval']['top1']:.1f}" in markdown


def test_tensorboard_events_on_tensorflow_ram_filesystem(tmp_path):
  """TensorBoard events go through TensorFlow's filesystem, not epath: here its in-memory ram://."""
  import tensorflow as tf

  events_dir = "ram://perceiver_tb"
  writer = metric_writer.MetricWriter(str(tmp_path), events_dir=events_dir)
  values = {4: 2.25, 8: 1.5}
  for step, loss in values.items():
    writer.write(step, {"train_loss": loss})
  writer.close()
  assert [r["train_loss"] for r in run_files.read_jsonl(tmp_path / run_files.METRICS)] == [2.25, 1.5]
  events = tf.io.gfile.glob(f"{events_dir}/events.out.tfevents.*")
  assert len(events) == 1 and not any(tmp_path.rglob("*tfevents*"))  # In TF's memory, not on the disk.
  read = {}
  for record in tf.data.TFRecordDataset(events):  # tf.data reads the same filesystem.
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      read[event.step] = float(tf.make_ndarray(value.tensor))
  assert read == values


# Files that touch no run path: the peers' benchmark harness, a benchmark's local scratch directory, and
# the sweep entry point's path to experiments/train.py.
_NOT_RUN_PATHS = {"scripts/compare_peers.py", "scripts/benchmark_input.py", "scripts/sweep.py"}
_OS_FILE_CALLS = {
  "makedirs",
  "mkdir",
  "replace",
  "rename",
  "remove",
  "unlink",
  "rmdir",
  "listdir",
  "scandir",
  "walk",
}


def test_no_os_path_on_run_paths():
  """Run paths go through epath (TensorFlow's filesystem for events): no os.path, os file calls, open()."""
  files = [*ROOT.glob("perceiver_jax/**/*.py"), *ROOT.glob("experiments/*.py"), *ROOT.glob("scripts/*.py")]
  found = []
  for file in sorted(files):
    name = file.relative_to(ROOT).as_posix()
    if name in _NOT_RUN_PATHS:
      continue
    for node in ast.walk(ast.parse(file.read_text())):
      bad = None
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
        bad = "os.path" if node.attr == "path" else f"os.{node.attr}" if node.attr in _OS_FILE_CALLS else None
      elif isinstance(node, ast.ImportFrom) and node.module in ("os", "os.path"):
        bad = f"from {node.module} import"
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
        bad = "open()"
      if bad:
        found.append(f"{name}:{node.lineno} {bad}")
  assert len(files) > 40 and not found, found
