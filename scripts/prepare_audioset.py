r"""Builds the TFDS dataset `audioset_clips` from AudioSet's segment lists and the clips you fetched.

  python scripts/prepare_audioset.py --manual_dir=/data/audioset --data_dir=/data/tfds --split=all

`--manual_dir` holds `class_labels_indices.csv`, the segment lists (`balanced_train_segments.csv`, ...) and
the clips named `<YTID>.<ext>` or `<YTID>_<start>.<ext>` in any layout below it, in any format soundfile or
PyAV decodes; each is mixed to mono and resampled to `--sample_rate` (the config's `dataset.sample_rate`;
48 kHz for configs/audioset.py). The result goes to `--data_dir`/audioset_clips/<rate>hz/1.0.0/, which
`--config.dataset.data_dir` then names. Clips missing or unreadable are counted, left out and listed in
`--data_dir`/audioset_clips_work/<rate>hz/<split>_{missing,unreadable}.txt. Interrupted or repeated, a run
resumes: decoded shards are cached there and only absent ones are decoded (perceiver_jax/data/audioset.py).

  python scripts/prepare_audioset.py --manual_dir=/data/audioset --data_dir=/data/tfds --video

`--video` (for the `video` and `audio_video*` variants of configs/audioset.py) also decodes each clip's
video (any container and codec PyAV reads: mp4, webm, mkv, ...; any frame rate, size and aspect) into
frames at 25 fps whose short side is `--short_side` pixels (256), stored as JPEGs beside the audio, aligned
in time, in `audioset_clips/<rate>hz/2.0.0` (work files in `audioset_clips_work/<rate>hz_video/`). Clips
without a video stream or with one that cannot be decoded are counted, left out and listed in
`<split>_no_video.txt` and `<split>_unreadable_video.txt`; the audio-only 1.0.0 stays as it is.
"""

from absl import flags

from perceiver_jax import cli
from perceiver_jax.data import audioset

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the CSVs and the clips.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to build into.", required=True)
_SPLIT = flags.DEFINE_enum(
  "split", "all", [*audioset.SPLITS, "all"], "Segment list(s) to prepare (all: those there)."
)
_SAMPLE_RATE = flags.DEFINE_integer("sample_rate", 48_000, "Rate to resample to (dataset.sample_rate).")
_CLIPS_PER_SHARD = flags.DEFINE_integer("clips_per_shard", 100, "Clips per decode-cache shard (resume unit).")
_VIDEO = flags.DEFINE_boolean("video", False, "Also store each clip's frames (25 fps, JPEG): version 2.0.0.")
_SHORT_SIDE = flags.DEFINE_integer("short_side", 256, "With --video: the frames' short side in pixels.")


def main(argv: list[str]) -> int:
  del argv
  splits = None if _SPLIT.value == "all" else (_SPLIT.value,)  # all: every segment list there.
  video = _VIDEO.value
  out, sizes, problems = audioset.prepare_audioset(
    _MANUAL_DIR.value, _DATA_DIR.value, splits, _SAMPLE_RATE.value, _CLIPS_PER_SHARD.value,
    video=video, short_side=_SHORT_SIDE.value,
  )  # fmt: skip
  work = audioset.work_dir(_DATA_DIR.value, _SAMPLE_RATE.value, video)
  for split, counts in problems.items():
    kinds = audioset.problem_kinds(video)
    told = ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in kinds)
    print(f"{split}: {sizes[split]} clips; {told} (listed in {work}/{split}_<kind>.txt)")
  print(f"audioset_clips is ready in {out}: {sizes}")
  return 0


if __name__ == "__main__":
  cli.run(main)
