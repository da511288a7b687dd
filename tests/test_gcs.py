"""Runs on gs:// end to end (train, preempt, resume, evaluate, make_tables; TFDS data) against a GCS emulator.

`gcp-storage-emulator` serves a bucket on 127.0.0.1 from this process (in memory). Three layers reach it:
- etils `epath` through gcsfs (`EPATH_USE_TF=false`; gcsfs honours `STORAGE_EMULATOR_HOST`), which writes
  config.json, metrics.jsonl, results.json, the lock, eval_results.json, the tables and orbax's checkpoint
  metadata, and reads a TFDS dataset's metadata (dataset_info.json, features.json);
- tensorstore's GCS driver (`TENSORSTORE_GCS_HTTP_URL`), which writes the checkpoints' arrays;
- TensorFlow's own GCS filesystem (tf.io.gfile; tf.data, which reads the TFDS records; tf.summary's
  TensorBoard events), whose hosts www.googleapis.com and storage.googleapis.com are compiled in: its
  libcurl goes through `https_proxy`, an HTTPS proxy of this process (`_TlsProxy`) that accepts `CONNECT`
  to those two hosts only, ends the TLS with a certificate of a throwaway CA (`CURL_CA_BUNDLE`) and passes
  the plain HTTP to the emulator; `GOOGLE_AUTH_TOKEN_FOR_TESTING` stands in for the credentials. With
  `EPATH_USE_TF` unset epath goes through this layer too (checked on its own).
The emulator is given what these clients need of Cloud Storage: `objects.moveTo` (gcsfs's rename), the
`x-goog-generation` header on downloads (tensorstore), and for TensorFlow chunked request bodies, empty
media uploads and https resumable-session URIs. Nothing leaves 127.0.0.1: plain http goes to the proxy as
well (which refuses it), except to the emulator itself (`NO_PROXY`), and the tests check that nothing was
refused. One TensorFlow call cannot be served from this process: opening a gs:// file with
tf.io.TFRecordWriter holds the GIL while it waits for the upload, so records are written locally and
copied.
"""

import ast
import datetime
import os
import select
import signal
import socket
import socketserver
import ssl
import threading
import types
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


def _read_chunked_first(read_raw):
  """The emulator's request-body reader, honouring `Transfer-Encoding: chunked` over `Content-Length` as
  HTTP/1.1 requires: TensorFlow's uploads send both (else the chunk framing is stored as the object)."""

  def read(handler):
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
      del handler.headers["Content-Length"]
    return read_raw(handler)

  return read


def _for_tls_clients(insert):
  """The emulator's `objects.insert`, plus what TensorFlow's uploads through the TLS proxy need: an empty
  media upload (TF's directory markers `dir/`, sent with no body) stores an empty object, and the
  resumable session URI is https (the emulator builds it as http://<Host>, which curl would send out
  directly instead of through the proxy)."""

  def handler(request, response, storage, *args, **kwargs):
    if request.query.get("uploadType") == ["media"] and request.data is None:
      request._data = b""  # noqa: SLF001
    insert(request, response, storage, *args, **kwargs)
    location = response._headers.get("Location", "")  # noqa: SLF001
    if location.startswith("http://") and request.get_header("Host") in _TLS_HOSTS:
      response["Location"] = "https://" + location.removeprefix("http://")

  return handler


# The hosts compiled into TensorFlow's GCS filesystem (tsl's gcs_file_system.cc): JSON API and uploads on
# the first, object media on the second.
_TLS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def _throwaway_ca(directory) -> tuple[str, str]:
  """A CA (ca.pem) and a certificate for `_TLS_HOSTS` it signed with its key (server.pem), valid a day."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

  now = datetime.datetime.now(datetime.UTC)
  ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "perceiver_jax test CA")])

  def certificate(subject, public_key):
    builder = x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
    validity = builder.serial_number(x509.random_serial_number()).not_valid_before(
      now - datetime.timedelta(minutes=5)
    )
    return validity.not_valid_after(now + datetime.timedelta(days=1))

  ca = certificate(ca_name, ca_key.public_key())
  ca = ca.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
  ca = ca.add_extension(
    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
  ).sign(ca_key, hashes.SHA256())
  leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _TLS_HOSTS[0])]), key.public_key())
  leaf = leaf.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in _TLS_HOSTS]), False)
  leaf = leaf.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
  leaf = leaf.sign(ca_key, hashes.SHA256())
  pem = serialization.Encoding.PEM
  (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
  (directory / "server.pem").write_bytes(
    leaf.public_bytes(pem)
    + key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
  )
  return str(directory / "ca.pem"), str(directory / "server.pem")


class _TlsProxy(socketserver.ThreadingTCPServer):
  """An HTTPS proxy on 127.0.0.1 for TensorFlow's libcurl (`https_proxy`). It answers `CONNECT` to
  `_TLS_HOSTS` port 443 only (anything else: 403, kept in `refused`), ends the TLS itself with
  server.pem and sends the request in plain HTTP to the emulator (`tunnelled`: (host, request line))."""

  daemon_threads = True

  def __init__(self, emulator: tuple[str, int], server_pem: str):
    self.emulator, self.tunnelled, self.refused = emulator, [], []
    self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.context.load_cert_chain(server_pem)
    self.context.set_alpn_protocols(["http/1.1"])
    super().__init__(("127.0.0.1", 0), _Tunnel)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}"


def _read_head(sock) -> tuple[bytes, bytes] | None:
  """An HTTP head (up to its blank line) and the bytes read after it; None if the peer closes first."""
  data = b""
  while b"\r\n\r\n" not in data:
    chunk = sock.recv(1 << 16)
    if not chunk:
      return None
    data += chunk
  head, rest = data.split(b"\r\n\r\n", 1)
  return head, rest


class _Tunnel(socketserver.BaseRequestHandler):
  """One CONNECT tunnel, carrying one request: the emulator answers in HTTP/1.0 and closes."""

  def handle(self):
    connect = _read_head(self.request)
    if connect is None:
      return
    line = connect[0].split(b"\r\n", 1)[0].decode("latin-1")
    method, target = (line.split() + ["", ""])[:2]
    if method != "CONNECT" or target not in {f"{host}:443" for host in _TLS_HOSTS}:
      self.server.refused.append(line)
      self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      return
    self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    try:
      with self.server.context.wrap_socket(self.request, server_side=True) as client:
        request = _read_head(client)
        if request is None:
          return
        head, rest = request
        lines = head.split(b"\r\n")
        kept = [h for h in lines if h.lower().replace(b" ", b"") != b"expect:100-continue"]
        self.server.tunnelled.append((target.removesuffix(":443"), lines[0].decode("latin-1")))
        if len(kept) < len(lines):  # The emulator (HTTP/1.0) never answers it: curl would wait 1 s.
          client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        with socket.create_connection(self.server.emulator) as upstream:
          upstream.sendall(b"\r\n".join(kept) + b"\r\n\r\n" + rest)
          _pipe(client, upstream)
    except (OSError, ssl.SSLError):  # A peer gone: the client sees its request fail, and retries.
      return


def _pipe(client, upstream) -> None:
  """Bytes both ways until either side closes (the TLS side may hold decrypted bytes `select` misses)."""
  client.setblocking(False)
  upstream.setblocking(False)
  while True:
    if not client.pending():
      select.select([client, upstream], [], [], 60)
    for source, target in ((client, upstream), (upstream, client)):
      try:
        data = source.recv(1 << 16)
      except (ssl.SSLWantReadError, BlockingIOError):
        continue
      if not data:
        return
      target.setblocking(True)
      target.sendall(data)
      target.setblocking(False)


@pytest.fixture(scope="module")
def gcs_emulator(tmp_path_factory):
  """A bucket gs://runs on an emulator of this process, with epath, tensorstore and TensorFlow's GCS
  filesystem pointed at it; `.bucket` is "gs://runs", `.proxy` the `_TlsProxy` TensorFlow goes through."""
  from gcp_storage_emulator import server as emulator
  from gcp_storage_emulator.server import create_server

  move_route = (
    rf"^{emulator.settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
    r"(?P<dest_object_id>.*[^/]+)$",
    {emulator.POST: _move_to},
  )
  from gcp_storage_emulator.handlers import objects

  handlers, download, read_raw = emulator.HANDLERS, objects.download, emulator._read_raw_data  # noqa: SLF001
  objects.download = _with_generation(download)  # `objects.get` with alt=media calls it by this name.
  replace = {download: objects.download, objects.insert: _for_tls_clients(objects.insert)}
  routed = [(r, {m: replace.get(h, h) for m, h in by.items()}) for r, by in handlers]
  emulator.HANDLERS = (move_route, *routed)  # Read by the router at every request.
  emulator._read_raw_data = _read_chunked_first(read_raw)  # noqa: SLF001
  port = _free_port()
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  ca, server_pem = _throwaway_ca(tmp_path_factory.mktemp("gcs_tls"))
  proxy = _TlsProxy(("127.0.0.1", port), server_pem)
  threading.Thread(target=proxy.serve_forever, daemon=True).start()
  endpoint = f"http://127.0.0.1:{port}"
  env = {
    "STORAGE_EMULATOR_HOST": endpoint,  # gcsfs (and google-cloud-storage).
    "TENSORSTORE_GCS_HTTP_URL": endpoint,  # orbax's arrays.
    "EPATH_USE_TF": "false",  # epath through gcsfs; tf.io.gfile is tested on its own.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # Else gcsfs spends 60 s on a gRPC bucket-type probe.
    "NO_GCE_CHECK": "true",  # Else google-auth probes the metadata server first.
    # TensorFlow's GCS filesystem (its libcurl): every https request through the proxy, which trusts
    # only the throwaway CA; plain http through it too (refused there), except to the emulator itself.
    "https_proxy": proxy.url,
    "HTTPS_PROXY": proxy.url,
    "http_proxy": proxy.url,
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "CURL_CA_BUNDLE": ca,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # A bearer token: no metadata server, no OAuth.
    # Read when TensorFlow first touches gs:// in this process: a failure shows in seconds, not minutes.
    "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
    "GCS_REQUEST_IDLE_TIMEOUT_SECS": "30",
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
    yield types.SimpleNamespace(bucket=f"gs://{BUCKET}", proxy=proxy)
  finally:
    for key, value in saved_jax.items():
      jax.config.update(key, value)
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    _clear_gcs_clients()
    proxy.shutdown()
    proxy.server_close()
    server.stop()
    emulator.HANDLERS, objects.download, emulator._read_raw_data = handlers, download, read_raw  # noqa: SLF001


@pytest.fixture
def gcs(gcs_emulator):
  """The emulator's bucket, "gs://runs"."""
  return gcs_emulator.bucket


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


def _tf_requests(proxy, since: int = 0) -> set[tuple[str, str]]:
  """(host, method) of the requests TensorFlow sent through the proxy, from the `since`-th on."""
  return {(host, line.split()[0]) for host, line in proxy.tunnelled[since:]}


def test_tensorflow_gcs_filesystem_on_the_emulator(gcs_emulator, tmp_path, monkeypatch):
  """tf.io.gfile and tf.data on gs:// reach the emulator (through the TLS proxy), and see what gcsfs sees."""
  import gcsfs
  import tensorflow as tf

  gfile, root, proxy = tf.io.gfile, f"{gcs_emulator.bucket}/tf", gcs_emulator.proxy
  with gfile.GFile(f"{root}/a.txt", "w") as f:  # A resumable upload: a POST, then a PUT.
    f.write("written by TF")
  with gfile.GFile(f"{root}/a.txt") as f:  # Metadata from the JSON API, bytes from storage.googleapis.com.
    assert f.read() == "written by TF"
  assert gcsfs.GCSFileSystem().cat(f"{BUCKET}/tf/a.txt") == b"written by TF"
  gcsfs.GCSFileSystem().pipe(f"{BUCKET}/tf/d/e/b.bin", b"\0" * 100_000)
  assert gfile.stat(f"{root}/d/e/b.bin").length == 100_000
  gfile.makedirs(f"{root}/empty/dir")  # Directory markers: empty objects `empty/`, `empty/dir/`.
  assert sorted(gfile.listdir(root)) == ["a.txt", "d/", "empty/"]
  assert gfile.isdir(f"{root}/d") and not gfile.isdir(f"{root}/a.txt")
  assert gfile.exists(f"{root}/a.txt") and not gfile.exists(f"{root}/none")
  gfile.rename(f"{root}/a.txt", f"{root}/c.txt")  # rewriteTo, then a delete.
  assert not gfile.exists(f"{root}/a.txt") and gfile.glob(f"{root}/*/*/*.bin") == [f"{root}/d/e/b.bin"]
  # Records written locally and copied (opening a gs:// file, tf.io.TFRecordWriter holds the GIL while
  # it waits for the upload, and the emulator of this process could not answer).
  with tf.io.TFRecordWriter(str(tmp_path / "r.tfrecord")) as writer:
    for i in range(5):
      writer.write(b"record %d" % i)
  gfile.copy(str(tmp_path / "r.tfrecord"), f"{root}/r.tfrecord")
  records = [r.numpy() for r in tf.data.TFRecordDataset(f"{root}/r.tfrecord")]
  assert records == [b"record %d" % i for i in range(5)]
  # epath through TensorFlow (EPATH_USE_TF unset, as on a TPU VM) reaches it too.
  sent = len(proxy.tunnelled)
  with monkeypatch.context() as m:
    m.delenv("EPATH_USE_TF")
    _clear_gcs_clients()
    assert epath.Path(root, "c.txt").read_text() == "written by TF"
    assert sorted(p.name for p in epath.Path(root).iterdir()) == ["c.txt", "d", "empty", "r.tfrecord"]
  _clear_gcs_clients()
  assert ("storage.googleapis.com", "GET") in _tf_requests(proxy, sent)
  gfile.rmtree(root)
  assert not gcsfs.GCSFileSystem(skip_instance_cache=True).find(f"{BUCKET}/tf")
  json_api = {("www.googleapis.com", method) for method in ("GET", "POST", "PUT", "DELETE")}
  assert _tf_requests(proxy) >= json_api | {("storage.googleapis.com", "GET")}
  assert not proxy.refused  # Nothing tried to leave 127.0.0.1 another way.


def _read_events(pattern: str) -> dict[tuple[int, str], float]:
  """The scalars of the TensorBoard event files matching `pattern`, read with tf.data, by (step, tag)."""
  import tensorflow as tf

  events = tf.io.gfile.glob(pattern)
  assert len(events) == 1, events
  read = {}
  for record in tf.data.TFRecordDataset(events):
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      read[event.step, value.tag] = float(tf.make_ndarray(value.tensor))
  return read


def test_tensorboard_events_on_gcs(gcs_emulator, tmp_path):
  """TensorBoard events go through TensorFlow's GCS filesystem (tf.summary), not epath."""
  events_dir = f"{gcs_emulator.bucket}/perceiver_tb"
  writer = metric_writer.MetricWriter(str(tmp_path), events_dir=events_dir)
  values = {4: 2.25, 8: 1.5}
  for step, loss in values.items():
    writer.write(step, {"train_loss": loss})
  writer.close()
  assert [r["train_loss"] for r in run_files.read_jsonl(tmp_path / run_files.METRICS)] == [2.25, 1.5]
  read = _read_events(f"{events_dir}/events.out.tfevents.*")  # tf.data reads the same filesystem.
  assert not any(tmp_path.rglob("*tfevents*"))  # In the bucket, not on the disk:
  assert [p for p in _objects(events_dir) if p.startswith("events.out.tfevents.")]  # listed by gcsfs.
  assert read == {(step, "train_loss"): loss for step, loss in values.items()}
  assert not gcs_emulator.proxy.refused


def _toy_tfds(data_dir, num_train: int, num_test: int) -> None:
  """A real TFDS dataset `gcs_toy` (8x8 grayscale PNGs, 10 classes) built in `data_dir` by TFDS's writer."""
  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds

  rng = np.random.default_rng(0)

  def split(n):
    images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n) % 10})

  features = {
    "image": tfds.features.Image(shape=(8, 8, 1)),
    "label": tfds.features.ClassLabel(num_classes=10),
  }
  tfds.dataset_builders.store_as_tfds_dataset(
    name="gcs_toy",
    version="1.0.0",
    features=tfds.features.FeaturesDict(features),
    split_datasets={"train": split(num_train), "test": split(num_test)},
    data_dir=str(data_dir),
  )


@pytest.mark.slow
def test_train_on_tfds_data_dir_on_gcs_with_tensorboard_events(gcs_emulator, tmp_path):
  """A TFDS dataset under gs:// (its metadata read by epath through gcsfs, its records by tf.data through
  TF's GCS filesystem) trains a run on gs:// whose TensorBoard events (TF's GCS filesystem) are read back."""
  import tensorflow as tf

  _toy_tfds(tmp_path / "tfds", num_train=400, num_test=5)  # 400: under 2 epochs of the 12 steps of 64.
  data_dir, proxy = f"{gcs_emulator.bucket}/tfds", gcs_emulator.proxy
  for path in (tmp_path / "tfds").rglob("*"):
    if path.is_file():
      tf.io.gfile.copy(str(path), f"{data_dir}/{path.relative_to(tmp_path / 'tfds').as_posix()}")
  assert "gcs_toy/1.0.0/gcs_toy-train.tfrecord-00000-of-00001" in _objects(data_dir)
  # The tiny digits run on TFDS batches of the same shapes: the module's compilation cache has its steps.
  config = load_config("digits", TINY + ",checkpoint.every=12")
  config.augment = load_config(
    "imagenet", "runlocal,randaugment_layers=0,mixup_alpha=0.0,cutmix_alpha=0.0"
  ).augment
  config.dataset.update(
    name="gcs_toy", data_dir=data_dir, shuffle_buffer=400, download=False, manual_dir=None
  )
  workdir = f"{gcs_emulator.bucket}/tfds_run"
  sent = len(proxy.tunnelled)
  results = train.train_and_evaluate(config, workdir)  # TensorBoard events on.
  record_reads = [line for host, line in proxy.tunnelled[sent:] if host == "storage.googleapis.com"]
  assert any("gcs_toy-train.tfrecord" in line for line in record_reads)  # tf.data read the bucket.
  assert any("gcs_toy-test.tfrecord" in line for line in record_reads)
  assert results["step"] == 12 and results["eval"]["count"] == 5  # Each test example once.
  logged = run_files.read_jsonl(epath.Path(workdir) / run_files.METRICS)
  assert [r["step"] for r in logged] == [4, 8, 12, 12]
  read = _read_events(f"{workdir}/tensorboard/events.out.tfevents.*")
  expected = {(r["step"], k): v for r in logged for k, v in r.items() if k != "step"}
  assert read.keys() == expected.keys() and (12, "train_loss") in read
  assert all(read[key] == float(tf.constant(v, tf.float32)) for key, v in expected.items())  # float32.
  assert any(p.startswith("tensorboard/events.out.tfevents.") for p in _objects(workdir))
  assert not proxy.refused


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
