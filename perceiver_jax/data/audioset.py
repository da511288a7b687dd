"""AudioSet from what researchers hold on disk, prepared once as the TFDS dataset `audioset_clips`.

The manual directory holds (any layout below it; found by name):
- the segment lists `balanced_train_segments.csv`, `unbalanced_train_segments.csv`, `eval_segments.csv`
  (three `#` lines, then `YTID, start_seconds, end_seconds, "mid,mid"`) and `class_labels_indices.csv`
  (`index,mid,display_name`; 527 classes for AudioSet, any number here);
- the clips each researcher fetched, named by YouTube ID: `<YTID>.<ext>` or `<YTID>_<start>[_<end>].<ext>`
  (as common downloaders write them), in any format soundfile (libsndfile: WAV, FLAC, OGG, ...) or else
  PyAV (FFmpeg: M4A, MP3, Opus, WebM, ...) decodes. A file longer than its segment by more than a second
  that reaches the segment's end is taken to be the whole video and cut to [start, end].
Each clip is mixed to mono (the channels' mean), resampled to `sample_rate` with scipy's polyphase
resampler (`scipy.signal.resample_poly`: the exact rational ratio, e.g. 160/147 from 44.1 to 48 kHz, with
a Kaiser-windowed anti-aliasing FIR; deterministic, no new dependency, about as good as soxr's default for
a classifier's input) and stored as int16 (peak-clipped to [-1, 1)). Decoders never run code from a file.

Resume: decoding is the work (1.7M clips); it is cached per shard of `clips_per_shard` consecutive rows of
a segment list in `DATA_DIR/audioset_clips_work/<rate>hz/<split>/NNNNNN.npz` (int16 audio, no pickles),
each written to a temporary name and renamed, so a shard file is complete or absent. A second run decodes
only the shards that are absent, then writes the TFDS files from the cache (reading, not decoding) unless
the prepared dataset already holds exactly those splits and clips. Splits prepared by an earlier run are
kept (`--split=balanced_train`, then `--split=eval`, gives both).
The cache takes as much room as the dataset (int16 at the rate: 0.96 MB per 10 s clip at 48 kHz, 1.7 TB
for the 1.8M train clips); delete it once every list you need is prepared (a later run then decodes again).
Clips missing from the folder or unreadable are counted, left out and listed with the reason in
`DATA_DIR/audioset_clips_work/<rate>hz/<split>_missing.txt` and `<split>_unreadable.txt`.

The TFDS dataset `audioset_clips`, config `<rate>hz` (e.g. `48000hz`), version 1.0.0, array_record files (so
that the reader can index any clip), splits `balanced_train`, `unbalanced_train`, `eval` (those prepared),
in segment-list order; features:
- `audio`: bytes of int16 little-endian [L] mono at `sample_rate` (L <= 10 s; shorter clips as they are),
- `labels`: bool [K] multi-hot over class_labels_indices.csv's order (index column),
- `ytid` (text), `start_seconds` (float32).

With `video=True` (`--video`: the video and audio+video variants of configs/audioset.py) the same files'
video is decoded too, into version 2.0.0 of the same config (`<rate>hz/2.0.0`; its own cache and lists in
`audioset_clips_work/<rate>hz_video/`), whose examples add
- `video`: the clip's frames at 25 fps (data/video_ops.decode: any container and codec PyAV reads, any
  frame rate, size and aspect), scaled so that the short side is `short_side` pixels (256: room for the
  Inception-style crop to 224 and the centre crop), each frame a JPEG (quality 90) [T] bytes. JPEG, not raw:
  a 10 s clip is 65 MB raw at 256 x 341 against about 2-4 MB in JPEG (1.8M clips: 110 TB against a few TB),
  and the reader decodes only the 32 frames of its window (docs/input_pipeline.md measures the cost).
The audio and the frames are aligned in time: both streams start at their own start times in the
container, and the head of the one that starts earlier is cut so that sample 0 and frame 0 are the same
instant (a whole video is then cut to [start, end] in both). A clip without an audio stream is unreadable
(the audio+video model needs both, and Table 3's columns are then measured on the same clips); one with
no video stream or a video that cannot be decoded is counted, left out and listed in
`<split>_no_video.txt` or `<split>_unreadable_video.txt`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
from etils import epath

NAME = "audioset_clips"
VERSION = "1.0.0"
VIDEO_VERSION = "2.0.0"  # The same clips' audio and 25 fps frames (prepare_audioset(video=True)).
JPEG_QUALITY = 90
SPLITS = ("balanced_train", "unbalanced_train", "eval")
CLASSES_CSV = "class_labels_indices.csv"
HOWTO = (
  "Put AudioSet's segment lists (balanced_train_segments.csv, unbalanced_train_segments.csv, "
  "eval_segments.csv, from https://research.google.com/audioset/download.html), class_labels_indices.csv and "
  "the clips you fetched (named <YTID>.<ext> or <YTID>_<start>.<ext>) under one directory, then run "
  "`python scripts/prepare_audioset.py --manual_dir=THAT_DIR --data_dir=DATA_DIR` once."
)
_YTID = 11  # YouTube IDs are 11 characters of [A-Za-z0-9_-].
_NOT_AUDIO = {".csv", ".txt", ".json", ".md", ".npz", ".part", ".ytdl", ".tmp"}
_START = re.compile(r"^_(-?\d+(?:\.\d+)?)(?:_-?\d+(?:\.\d+)?)?$")


def config_name(sample_rate: int) -> str:
  """The TFDS config name of a rate: '48000hz'."""
  return f"{int(sample_rate)}hz"


def dataset_dir(data_dir: str, sample_rate: int, video: bool = False) -> epath.Path:
  """Where the prepared TFDS files of `sample_rate` are: DATA_DIR/audioset_clips/<rate>hz/1.0.0 (2.0.0)."""
  return epath.Path(data_dir) / NAME / config_name(sample_rate) / (VIDEO_VERSION if video else VERSION)


def work_dir(data_dir: str, sample_rate: int, video: bool = False) -> epath.Path:
  """The decode cache and the lists of missing and unreadable clips (`<rate>hz_video` with video)."""
  return epath.Path(data_dir) / f"{NAME}_work" / (config_name(sample_rate) + ("_video" if video else ""))


def problem_kinds(video: bool) -> tuple[str, ...]:
  """The kinds of clips left out, each listed in `<split>_<kind>.txt`."""
  return ("missing", "unreadable", "no_video", "unreadable_video") if video else ("missing", "unreadable")


# ---------------------------------------------------------------------------------------------------------
# The CSVs.


@dataclasses.dataclass(frozen=True)
class Segment:
  ytid: str
  start: float
  end: float
  mids: tuple[str, ...]


def read_classes(path: epath.Path) -> list[str]:
  """class_labels_indices.csv -> the mids in index order."""
  rows = list(csv.reader(io.StringIO(path.read_text())))
  if not rows or [c.strip() for c in rows[0][:2]] != ["index", "mid"]:
    raise ValueError(f"{path} does not start with the header 'index,mid,display_name'.")
  mids = {}
  for row in rows[1:]:
    if row:
      mids[int(row[0])] = row[1].strip()
  if sorted(mids) != list(range(len(mids))):
    raise ValueError(f"{path}: the index column is not 0..{len(mids) - 1}.")
  return [mids[i] for i in range(len(mids))]


def read_segments(path: epath.Path) -> list[Segment]:
  """A segment list: '#' lines, then `YTID, start_seconds, end_seconds, "mid,mid"` rows."""
  segments = []
  lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
  for number, row in enumerate(csv.reader(lines, skipinitialspace=True)):
    if len(row) != 4:
      raise ValueError(f'{path}: row {number + 1} {row} is not `YTID, start, end, "mid,mid"`.')
    mids = tuple(m.strip() for m in row[3].split(",") if m.strip())
    segments.append(Segment(row[0].strip(), float(row[1]), float(row[2]), mids))
  return segments


# ---------------------------------------------------------------------------------------------------------
# Finding and decoding the clips.


Clips = dict[str, list[tuple[float | None, str]]]  # YTID -> [(start in the file name or None, path)]


def find_files(manual_dir: epath.Path) -> tuple[dict[str, epath.Path], Clips]:
  """({csv name: path}, {YTID: [(start in the name or None, path)]}) of everything under `manual_dir`."""
  csvs, clips = {}, {}
  for root, dirs, files in manual_dir.walk():  # As os.walk (top down), through epath.
    dirs.sort()
    for name in sorted(files):
      file = root / name
      stem, ext, path = file.stem, file.suffix, str(file)
      if ext.lower() == ".csv":
        csvs.setdefault(name, file)
      if name.startswith(".") or ext.lower() in _NOT_AUDIO or len(stem) < _YTID:
        continue
      rest = _START.match(stem[_YTID:]) if stem[_YTID:] else None
      if stem[_YTID:] and not rest:
        continue
      clips.setdefault(stem[:_YTID], []).append((float(rest.group(1)) if rest else None, path))
  return csvs, clips


def clip_path(segment: Segment, clips: Clips) -> str | None:
  """The file of a segment: one named with its start, else one named by the YTID alone."""
  found = clips.get(segment.ytid, [])
  for start, path in found:
    if start is not None and abs(start - segment.start) < 1e-3:
      return path
  plain = [path for start, path in found if start is None]
  return plain[0] if plain else None


def _decode_av(path: str) -> tuple[np.ndarray, int]:
  import av

  with av.open(path) as container:
    if not container.streams.audio:
      raise ValueError("no audio stream")
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="fltp")  # Planar float32, the stream's layout and rate.
    parts, rate = [], stream.rate
    for frame in container.decode(stream):
      for out in resampler.resample(frame):
        parts.append(out.to_ndarray())  # [channels, n]
        rate = out.sample_rate
    for out in resampler.resample(None):
      parts.append(out.to_ndarray())
  if not parts or not rate:
    raise ValueError("no audio decoded")
  return np.concatenate(parts, axis=1).T, int(rate)


def decode(path: str) -> tuple[np.ndarray, int]:
  """float32 [n, channels] in [-1, 1] and the file's rate: soundfile, else PyAV."""
  import soundfile

  try:
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return samples, int(rate)
  except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_error:
    try:
      return _decode_av(path)
    except Exception as av_error:  # PyAV raises a family of FFmpeg errors; all mean unreadable here.
      raise ValueError(f"soundfile: {sf_error}; PyAV: {av_error}") from None


def load_clip(path: str, segment: Segment, sample_rate: int) -> np.ndarray:
  """The segment's audio, int16 [L] mono at `sample_rate`, at most its length (end - start)."""
  samples, rate = decode(path)
  return _to_int16(*_cut(samples, rate, segment, 0.0), segment, sample_rate)[0]


def _cut(samples: np.ndarray, rate: int, segment: Segment, head: float) -> tuple[np.ndarray, int, float]:
  """(mono float64 from `head` seconds on, the rate, the segment's start in it: 0, or its start when the
  file is the whole video: longer than the segment by more than a second and reaching its end)."""
  if samples.size == 0:
    raise ValueError("no samples")
  mono = samples[int(round(head * rate)) :].mean(axis=1, dtype=np.float64)
  duration = segment.end - segment.start
  whole = len(mono) > (duration + 1.0) * rate and len(mono) >= segment.end * rate
  return mono, rate, segment.start if whole else 0.0


def _to_int16(mono: np.ndarray, rate: int, start: float, segment: Segment, sample_rate: int):
  """The segment [start, start + duration) of `mono`, resampled to `sample_rate`, as int16; and `start`."""
  from scipy import signal

  duration = segment.end - segment.start
  if start:
    mono = mono[int(start * rate) : int((start + duration) * rate)]
  if rate != sample_rate:
    g = math.gcd(int(sample_rate), rate)
    mono = signal.resample_poly(mono, int(sample_rate) // g, rate // g)
  mono = mono[: int(round(duration * sample_rate))]
  if not np.all(np.isfinite(mono)):
    raise ValueError("non-finite samples")
  return np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16), start


def _stream_starts(path: str) -> tuple[float, float]:
  """(audio start, video start) in seconds on the container's clock (0 where a stream has none)."""
  import av

  def start(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0

  with av.open(path) as container:
    audio, video = container.streams.audio, container.streams.video
    return (start(audio[0]) if audio else 0.0), (start(video[0]) if video else 0.0)


def load_av_clip(path: str, segment: Segment, sample_rate: int, short_side: int = 256):
  """(audio int16 [L] as load_clip, frames uint8 [T, H, W, 3] at 25 fps from the same instant).

  Raises:
    ValueError: the audio cannot be read (as load_clip).
    video_ops.VideoError: no video stream ('no video stream' in its message), or one that cannot be decoded.
  """
  from perceiver_jax.data import video_ops

  samples, rate = decode(path)
  try:
    audio_start, video_start = _stream_starts(path)
  except Exception:  # A file PyAV cannot open (soundfile read the audio): its video fails below.
    audio_start = video_start = 0.0
  lag = video_start - audio_start  # > 0: the picture starts later; the audio's head is cut.
  audio, start = _to_int16(*_cut(samples, rate, segment, max(lag, 0.0)), segment, sample_rate)
  # Whole frames: those before the audio's first sample (lag < 0), then the segment's start in the file.
  first = max(int(round(-lag * video_ops.FPS)), 0) + int(round(start * video_ops.FPS))
  length = int(round((segment.end - segment.start) * video_ops.FPS))
  frames = video_ops.decode(path, video_ops.FPS, short_side, first / video_ops.FPS, length / video_ops.FPS)
  return audio, frames[:length]


def _jpeg(frame: np.ndarray) -> bytes:
  from PIL import Image

  out = io.BytesIO()
  Image.fromarray(frame).save(out, format="JPEG", quality=JPEG_QUALITY)
  return out.getvalue()


# ---------------------------------------------------------------------------------------------------------
# The decode cache, shard by shard.


def _decode_shard(
  segments: Sequence[Segment],
  first: int,
  clips,
  classes: dict[str, int],
  sample_rate: int,
  short_side: int | None = None,
) -> dict[str, np.ndarray]:
  """The shard's arrays; `short_side` (not None): with each clip's frames as JPEGs (load_av_clip)."""
  from perceiver_jax.data import video_ops

  audio, lengths, rows, problems, jpegs, num_frames = [], [], [], [], [], []
  labels = np.zeros((len(segments), len(classes)), np.bool_)

  def say(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else repr(error)

  for i, segment in enumerate(segments):
    where = f"{segment.ytid} {segment.start:.3f}"
    path = clip_path(segment, clips)
    if path is None:
      problems.append(f"missing\t{where}\tno file {segment.ytid}.* or {segment.ytid}_<start>.*")
      continue
    try:
      if short_side is None:
        clip = load_clip(path, segment, sample_rate)
      else:
        clip, frames = load_av_clip(path, segment, sample_rate, short_side)
    except video_ops.VideoError as error:  # The audio was read: the video is what is wrong.
      kind = "no_video" if "no video stream" in str(error) else "unreadable_video"
      problems.append(f"{kind}\t{where}\t{path}: {say(error)}")
      continue
    except Exception as error:  # Any decoder or resampler failure: the clip is left out, listed.
      problems.append(f"unreadable\t{where}\t{path}: {say(error)}")
      continue
    audio.append(clip)
    lengths.append(len(clip))
    rows.append(first + i)
    labels[i, [classes[m] for m in segment.mids if m in classes]] = True
    if short_side is not None:
      jpegs += [np.frombuffer(_jpeg(frame), np.uint8) for frame in frames]
      num_frames.append(len(frames))
  arrays = {
    "audio": np.concatenate(audio) if audio else np.zeros(0, np.int16),
    "lengths": np.asarray(lengths, np.int64),
    "rows": np.asarray(rows, np.int64),
    "labels": labels[np.asarray(rows, np.int64) - first] if rows else np.zeros((0, len(classes)), np.bool_),
    "problems": np.asarray(problems, dtype=str),
  }
  if short_side is not None:  # The JPEG bytes of every frame, one after another, and where they end.
    arrays["jpeg"] = np.concatenate(jpegs) if jpegs else np.zeros(0, np.uint8)
    arrays["jpeg_lengths"] = np.asarray([len(j) for j in jpegs], np.int64)
    arrays["num_frames"] = np.asarray(num_frames, np.int64)
  return arrays


def _load_npz(path: epath.Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """The arrays `keys` (None: all) of a cache shard; an npz reads only the members asked for."""
  with path.open("rb") as f, np.load(f, allow_pickle=False) as z:  # Our own cache, still never pickles.
    return {k: z[k] for k in (z.files if keys is None else keys)}


def cache_split(
  split: str,
  segments: Sequence[Segment],
  clips,
  classes: dict[str, int],
  sample_rate: int,
  folder: epath.Path,
  clips_per_shard: int,
  log=print,
  short_side: int | None = None,
) -> tuple[list[epath.Path], int]:
  """Decodes the absent shards of a split into `folder`; returns (all shard paths, shards decoded now).

  `short_side` (not None): the clips' video too, frames of that short side (prepare_audioset's `video`).
  """
  folder.mkdir(parents=True, exist_ok=True)
  paths, decoded = [], 0
  for shard, first in enumerate(range(0, len(segments), clips_per_shard)):
    path = folder / f"{shard:06d}.npz"
    paths.append(path)
    if path.exists():
      continue
    part = segments[first : first + clips_per_shard]
    arrays = _decode_shard(part, first, clips, classes, sample_rate, short_side)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = folder / f".{path.name}.tmp"
    tmp.write_bytes(buffer.getvalue())
    tmp.rename(path)
    decoded += 1
    log(f"{split}: shard {shard + 1}/{math.ceil(len(segments) / clips_per_shard)} decoded")
  return paths, decoded


def _cached_examples(paths: Sequence[epath.Path], segments: Sequence[Segment]) -> Iterator[tuple[int, dict]]:
  for path in paths:
    z = _load_npz(path)
    ends = np.cumsum(z["lengths"])
    if "jpeg" in z:  # Frame f of the shard is jpeg[jpeg_ends[f] - jpeg_lengths[f] : jpeg_ends[f]].
      jpeg_ends, frame_ends = np.cumsum(z["jpeg_lengths"]), np.cumsum(z["num_frames"])
    for c, (row, end, length, labels) in enumerate(
      zip(z["rows"], ends, z["lengths"], z["labels"], strict=True)
    ):
      segment = segments[int(row)]
      example = {
        "audio": z["audio"][end - length : end].astype("<i2").tobytes(),
        "labels": labels,
        "ytid": segment.ytid,
        "start_seconds": np.float32(segment.start),
      }
      if "jpeg" in z:
        frames = range(frame_ends[c] - z["num_frames"][c], frame_ends[c])
        example["video"] = [
          z["jpeg"][jpeg_ends[f] - z["jpeg_lengths"][f] : jpeg_ends[f]].tobytes() for f in frames
        ]
      yield int(row), example


def _problems(paths: Sequence[epath.Path]) -> list[str]:
  return [str(p) for path in paths for p in _load_npz(path, ["problems"])["problems"]]


# ---------------------------------------------------------------------------------------------------------
# Preparing.


def prepare_audioset(
  manual_dir: str,
  data_dir: str,
  splits: Sequence[str] | None = None,
  sample_rate: int = 48_000,
  clips_per_shard: int = 100,
  log=print,
  video: bool = False,
  short_side: int = 256,
) -> tuple[epath.Path, dict[str, int], dict[str, dict[str, int]]]:
  """Builds (or completes) `audioset_clips/<rate>hz` in `data_dir` from `manual_dir`.

  `splits`: segment lists to prepare (None: every one of SPLITS whose CSV is there).
  `video`: version 2.0.0, the clips' frames too (25 fps, short side `short_side` pixels, JPEG).
  Returns (the dataset's directory, {split: clips prepared}, {split: {kind: n}} over problem_kinds(video)).

  Raises:
    FileNotFoundError: `manual_dir` is missing or lacks the CSVs asked for (the message says what to do).
  """
  unknown = set(splits or ()) - set(SPLITS)
  if unknown or splits == ():
    raise ValueError(f"splits {sorted(unknown) or splits} must be among {SPLITS}.")
  if int(sample_rate) <= 0 or clips_per_shard <= 0 or short_side <= 0:
    raise ValueError(
      f"sample_rate={sample_rate}, clips_per_shard={clips_per_shard} and short_side={short_side} must be "
      "positive."
    )
  manual = epath.Path(manual_dir)
  if not manual.is_dir():
    raise FileNotFoundError(f"--manual_dir={manual_dir!r} is not a directory. {HOWTO}")
  csvs, clips = find_files(manual)
  if splits is None:
    splits = [s for s in SPLITS if f"{s}_segments.csv" in csvs] or list(SPLITS)  # None there: say so below.
  wanted = [CLASSES_CSV] + [f"{s}_segments.csv" for s in splits]
  absent = [name for name in wanted if name not in csvs]
  if absent:
    raise FileNotFoundError(f"--manual_dir={manual_dir!r} has no {', '.join(absent)}. {HOWTO}")
  mids = read_classes(csvs[CLASSES_CSV])
  classes = {mid: i for i, mid in enumerate(mids)}
  work = work_dir(data_dir, sample_rate, video)
  out = dataset_dir(data_dir, sample_rate, video)
  prepared = _prepared_splits(out)
  splits = [s for s in SPLITS if s in splits or s in prepared]  # Earlier runs' splits are kept.
  segments, shards, counts, decoded = {}, {}, {}, 0
  for split in splits:
    if f"{split}_segments.csv" not in csvs:
      raise FileNotFoundError(f"{split} was prepared before, but {manual_dir} has no {split}_segments.csv.")
    segments[split] = read_segments(csvs[f"{split}_segments.csv"])
    shards[split], now = cache_split(
      split, segments[split], clips, classes, sample_rate, work / split, clips_per_shard, log,
      short_side if video else None,
    )  # fmt: skip
    decoded += now
    problems = _problems(shards[split])
    for kind in problem_kinds(video):
      listed = [p.split("\t", 1)[1] for p in problems if p.split("\t", 1)[0] == kind]
      (work / f"{split}_{kind}.txt").write_text("".join(f"{line}\n" for line in listed))
      counts.setdefault(split, {})[kind] = len(listed)
  sizes = {s: len(segments[s]) - sum(counts[s].values()) for s in splits}
  if not decoded and prepared == {s: sizes[s] for s in splits}:
    log(f"{out} already holds {sizes}: nothing to do.")
    return out, sizes, counts
  sources = {s: (shards[s], segments[s]) for s in splits}
  _write_tfds(data_dir, sample_rate, len(mids), sources, out, manual_dir, video)
  return out, sizes, counts


def _prepared_splits(out: epath.Path) -> dict[str, int]:
  """{split: examples} of a dataset prepared before in `out`, or {}."""
  if not (out / "dataset_info.json").exists():
    return {}
  import tensorflow_datasets as tfds

  info = tfds.builder_from_directory(os.fspath(out)).info
  return {name: split.num_examples for name, split in info.splits.items()}


def _write_tfds(
  data_dir, sample_rate, num_classes, sources, out: epath.Path, manual_dir: str, video: bool = False
) -> None:
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")
  if out.exists():
    out.rmtree()  # Rewritten from the cache with every split; the decoding is not redone.
  features = tfds.features.FeaturesDict(
    {
      # int16 little-endian bytes: a 10 s clip parses in a fraction of the time its 480,000 samples as
      # int64 varints (tfds.features.Audio's encoding of a variable length) would take.
      "audio": tfds.features.Tensor(shape=(), dtype=np.object_),
      "labels": tfds.features.Tensor(shape=(num_classes,), dtype=np.bool_),
      "ytid": tfds.features.Text(),
      "start_seconds": tfds.features.Scalar(dtype=np.float32),
      # The frames' JPEG bytes [T]: the reader decodes only those of its window (PIL), not the clip.
      **({"video": tfds.features.Tensor(shape=(None,), dtype=np.object_)} if video else {}),
    }
  )
  tfds.dataset_builders.store_as_tfds_dataset(
    name=NAME,
    version=VIDEO_VERSION if video else VERSION,
    config=config_name(sample_rate),
    features=features,
    split_datasets={s: _cached_examples(paths, segments) for s, (paths, segments) in sources.items()},
    data_dir=data_dir,
    description=f"AudioSet clips from {manual_dir}, mono int16 at {sample_rate} Hz"
    + (", frames at 25 fps as JPEG" if video else "")
    + " (perceiver_jax).",
    file_format="array_record",  # Random access: the reader indexes clips (shares.py), as sounds.py.
    disable_shuffling=True,  # Segment-list order.
  )


# ---------------------------------------------------------------------------------------------------------
# A fake AudioSet folder of real audio files (tests, scripts/benchmark_input.py).


def fake_clip(rng: np.random.Generator, labels: Sequence[int], seconds: float, rate: int, channels: int):
  """float32 [n, channels]: a tone per label (class k at 300 x 1.5^k Hz) over noise, one level per channel."""
  t = np.arange(int(seconds * rate)) / rate
  mono = 0.05 * rng.normal(size=t.size)
  for k in labels:
    mono += 0.3 * np.sin(2 * np.pi * 300.0 * 1.5**k * t + rng.uniform(0, 2 * np.pi))
  return np.stack([mono * (1.0 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def _write_m4a(path: str, samples: np.ndarray, rate: int) -> None:
  """AAC in an MP4 container through PyAV (a format libsndfile does not read)."""
  import av

  with av.open(path, "w") as out:
    stream = out.add_stream("aac", rate=rate)
    stream.layout = "stereo" if samples.shape[1] == 2 else "mono"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp", layout=stream.layout)
    frame.sample_rate = rate
    for packet in [*stream.encode(frame), *stream.encode(None)]:
      out.mux(packet)


def write_fake_audioset(
  manual_dir: str, num_classes: int = 5, sizes: dict[str, int] | None = None, seed: int = 0
) -> dict[str, list[str]]:
  """Writes CSVs and clips under `manual_dir`; returns {'missing': [YTID], 'corrupt': [YTID], 'short': ...}.

  Clips of 10 s segments as FLAC and WAV at 8, 11.025 and 16 kHz, mono and stereo, named `<YTID>.<ext>` or
  `<YTID>_<start>.<ext>` in two sub-folders; each split's third clip lasts 4 s, its fourth is left out
  (missing), its fifth is a corrupt file and its sixth AAC in .m4a (PyAV's path). Each clip holds one or
  two classes (tones, `fake_clip`).
  """
  import soundfile

  sizes = sizes or {"balanced_train": 24, "eval": 12}
  root = epath.Path(manual_dir)
  (root / "audio" / "a").mkdir(parents=True, exist_ok=True)
  (root / "audio" / "b").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  (root / CLASSES_CSV).write_text(
    "index,mid,display_name\n" + "".join(f'{k},/m/c{k},"class {k}, fake"\n' for k in range(num_classes))
  )
  facts = {"missing": [], "corrupt": [], "short": []}
  for split, count in sizes.items():
    lines = ["# Segments csv (fake)", f"# num_ytids={count}", "# YTID, start_seconds, end_seconds, mids"]
    for i in range(count):
      ytid = f"{split[:2]}{i:03d}".ljust(_YTID, "_")[: _YTID - 2] + rng.choice(["-a", "_b", "xY"])
      start = float(10 * (i % 3))
      labels = sorted(rng.choice(num_classes, size=1 + i % 2, replace=False).tolist())
      mids = ",".join(f"/m/c{k}" for k in labels)
      lines.append(f'{ytid}, {start:.3f}, {start + 10:.3f}, "{mids}"')
      rate, channels, ext = (8000, 11025, 16000)[i % 3], 1 + i % 2, ("flac", "wav")[(i // 2) % 2]
      name = f"{ytid}_{start:.3f}.{ext}" if i % 2 else f"{ytid}.{ext}"
      path = root / "audio" / "ab"[i % 2] / name
      if i == 3:
        facts["missing"].append(ytid)
        continue
      if i == 4:
        facts["corrupt"].append(ytid)
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
        continue
      seconds = 4.0 if i == 2 else 10.0
      if i == 2:
        facts["short"].append(ytid)
      samples = fake_clip(rng, labels, seconds, rate, channels)
      if i == 5:
        _write_m4a(os.fspath(path.with_suffix(".m4a")), samples, rate)
      else:
        soundfile.write(os.fspath(path), samples, rate)
    (root / f"{split}_segments.csv").write_text("\n".join(lines) + "\n")
  return facts


def _write_video(
  path: str, seconds: float, size: tuple[int, int], samples, rate: int, kind: str, broken: bool = False
) -> None:
  """A 30 fps clip of `size` (W, H) through PyAV: frame k a grey of level 40 + 60 k / 30 (its time) with a
  bright square moving across; `samples` float32 [n, 1] (None: no audio stream). `kind`: 'mp4' (H.264 and
  AAC), 'webm' (VP8 and Opus) or 'mkv' (MPEG-4 part 2 and AAC). `broken`: the video packets random bytes
  (a stream no decoder reads), the audio sound."""
  from fractions import Fraction

  import av

  codec, audio_codec = {"mp4": ("libx264", "aac"), "webm": ("libvpx", "libopus"), "mkv": ("mpeg4", "aac")}[
    kind
  ]
  w, h = size
  with av.open(path, "w") as out:
    video = out.add_stream(codec, rate=30)
    video.width, video.height, video.pix_fmt = w, h, "yuv420p"
    if kind == "webm":  # libvpx's default (best quality) takes a second a clip.
      video.options = {"deadline": "realtime", "cpu-used": "8"}
    if samples is not None:
      audio = out.add_stream(audio_codec, rate=rate)
      audio.layout = "mono"
    for k in range(int(round(seconds * 30))):
      if broken:
        packet = av.Packet(np.random.default_rng(k).integers(0, 256, 2000, np.uint8).tobytes())
        packet.stream, packet.time_base, packet.pts, packet.dts = video, Fraction(1, 30), k, k
        out.mux(packet)
        continue
      image = np.full((h, w, 3), 40 + 60 * k / 30, np.uint8)
      x = int((w - 16) * k / max(seconds * 30 - 1, 1))
      image[h // 8 : h // 8 + 16, x : x + 16] = (250, 200, 30)
      for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        out.mux(packet)
    if not broken:
      out.mux(video.encode(None))
    if samples is not None:
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp", layout="mono")
      frame.sample_rate = rate
      for packet in [*audio.encode(frame), *audio.encode(None)]:
        out.mux(packet)


def write_fake_video_audioset(
  manual_dir: str,
  num_classes: int = 5,
  sizes: dict[str, int] | None = None,
  seconds: float = 2.0,
  seed: int = 0,
) -> dict[str, list[str]]:
  """CSVs and 30 fps video clips under `manual_dir` (segments of `seconds`); returns the YTIDs by case.

  Clip i of a split: i % 8 = 0 an .mp4 (H.264, AAC) of 320 x 240; 1 a portrait .webm (VP8, Opus) of
  240 x 320; 2 a short .mkv (MPEG-4, AAC; 60% of the segment); 3 an .mp4 without audio (`no_audio`);
  4 a broken .mkv (its video packets random bytes, its audio sound: `broken`); 5 audio alone in .m4a
  (`no_video`); 6 the whole video, longer, the segment a part of it from 1 s on (`whole`); 7 a portrait
  .mp4. Each holds one or two classes: tones (fake_clip) in the sound; in the picture a grey that brightens
  with time (level 40 + 60 t).
  """
  sizes = sizes or {"balanced_train": 8, "eval": 4}
  root = epath.Path(manual_dir)
  (root / "video").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  (root / CLASSES_CSV).write_text(
    "index,mid,display_name\n" + "".join(f"{k},/m/c{k},class {k}\n" for k in range(num_classes))
  )
  facts = {"no_audio": [], "broken": [], "no_video": [], "short": [], "whole": [], "portrait": []}
  for split, count in sizes.items():
    lines = ["# Segments csv (fake)", f"# num_ytids={count}", "# YTID, start_seconds, end_seconds, mids"]
    for i in range(count):
      case = i % 8
      ytid = f"v{split[:2]}{i:03d}".ljust(_YTID, "x")
      start = 1.0 if case == 6 else 0.0
      labels = sorted(rng.choice(num_classes, size=1 + i % 2, replace=False).tolist())
      lines.append(f'{ytid}, {start:.3f}, {start + seconds:.3f}, "{",".join(f"/m/c{k}" for k in labels)}"')
      kind = {1: "webm", 2: "mkv", 4: "mkv"}.get(case, "mp4")
      rate = 48_000 if kind == "webm" else 16_000
      length = seconds * (0.6 if case == 2 else 1.0) + (2.0 if case == 6 else 0.0)
      size = (240, 320) if case in (1, 7) else (320, 240)
      samples = None if case == 3 else fake_clip(rng, labels, length, rate, 1)
      path = os.fspath(root / "video" / f"{ytid}.{kind}")
      for name, when in (("short", 2), ("no_audio", 3), ("broken", 4), ("no_video", 5), ("whole", 6)):
        if case == when:
          facts[name].append(ytid)
      if case in (1, 7):
        facts["portrait"].append(ytid)
      if case == 5:
        _write_m4a(os.fspath(root / "video" / f"{ytid}.m4a"), samples, rate)
        continue
      _write_video(path, length, size, samples, rate, kind, broken=case == 4)
    (root / f"{split}_segments.csv").write_text("\n".join(lines) + "\n")
  return facts
