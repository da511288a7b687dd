r"""Measures the input pipeline alone (no model) per process, and says what a pod host needs of it.

  python scripts/benchmark_input.py --config=configs/imagenet.py --config.dataset.data_dir=/data/tfds \
      --config.train.global_batch_size=64 --config.train.eval_batch_size=64 --num_batches=50

Audio (configs/audioset.py): `--fake_audioset_clips=N` writes a fake AudioSet folder (N balanced_train and
N / 4 eval clips of 10 s, FLAC/WAV/AAC at 8-16 kHz, data/audioset.write_fake_audioset), prepares it at the
config's rate with the real prepare_audioset (into a temporary directory) and measures the clip reader:
train clips/s (a random 1.28 s crop each) and eval clips/s (16 windows each).

Video (configs/audioset.py:video, audio_video, ...): `--fake_audioset_video_clips=N` writes N balanced_train
and N / 4 eval clips of 10 s, 30 fps, 320 x 240 and portrait (H.264/MP4, VP8/WebM, MPEG-4/MKV; of each 8,
3 are left out by design: data/audioset.write_fake_video_audioset), prepares them with `video=True` (frames at
25 fps, short side `--short_side`, JPEG) and measures the reader: train clips/s (a 32-frame window decoded,
cropped, flipped, colour-jittered, and its audio) and eval clips/s (16 windows, centre crops).

`--fake_images_per_class=N` builds a fake ImageNet first (3 classes x N train and 3N validation JPEGs at
typical ImageNet sizes, written as the ILSVRC2012 tars and run through the real TFDS builder, as the tests
do) in a temporary directory and measures on that. Prints one JSON line.

Train: examples/s yielded and images/s read (decoded and augmented); with MixUp/CutMix each example is
made of two images read, as in the official Perceiver code. `host_need`: the images a host must read per
second to keep its chips busy, from the config's model: training costs 3 x its forward FLOPs per example
(forward and backward, remat's recompute not counted), so a chip of `--chip_tflops` at `--mfu` trains
mfu x tflops / (3 x forward TFLOPs) examples/s, a host `--chips_per_host` times that, and reads
`data.images_per_example` images per example; `cores_at_measured_rate` divides by the rate per CPU core
measured here.
"""

import itertools
import json
import os
import tempfile
import time

import tensorflow as tf  # noqa: F401  Imported before any timing: the import alone takes seconds.
from absl import flags, logging

from perceiver_jax import cli, data
from perceiver_jax.data import tfds_input

_CONFIG = cli.define_config_file("config", None, "Config file, e.g. configs/imagenet.py:runlocal.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 20, "Batches timed, per pipeline.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Batches pulled before timing (pipeline start, buffers).")
_FAKE = flags.DEFINE_integer("fake_images_per_class", 0, "If > 0, measure on a fake ImageNet of this size.")
_FAKE_AUDIOSET = flags.DEFINE_integer(
  "fake_audioset_clips", 0, "If > 0, measure on a fake AudioSet this big."
)
_FAKE_VIDEO = flags.DEFINE_integer(
  "fake_audioset_video_clips",
  0,
  "If > 0, measure a video config on a fake AudioSet of this many video clips.",
)
_SHORT_SIDE = flags.DEFINE_integer(
  "short_side", 256, "With --fake_audioset_video_clips: stored frames' short side."
)
# A v5e:8x8 pod: 64 chips on 16 hosts, 197 bf16 TFLOP/s per chip.
_CHIPS_PER_HOST = flags.DEFINE_integer("chips_per_host", 4, "Accelerator chips per host, for host_need.")
_CHIP_TFLOPS = flags.DEFINE_float("chip_tflops", 197.0, "Peak TFLOP/s of one chip, for host_need.")
_MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed, for host_need.")

# Typical ImageNet photo sizes (height, width); the median image is about 400 x 350.
_IMAGENET_LIKE_SIZES = ((375, 500), (500, 375), (333, 500), (500, 400), (400, 300), (281, 500))


def _measure(batches, num_batches: int, warmup: int) -> tuple[float, float]:
  """(seconds to the first batch, examples/s over `num_batches` after `warmup`); padding is not counted."""
  start = time.perf_counter()
  next(batches)
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    next(batches)
  images, start = 0, time.perf_counter()
  for _ in range(num_batches):
    batch = next(batches)
    images += int(batch["eval_mask"].sum()) if "eval_mask" in batch else len(batch["label"])
  return first, images / (time.perf_counter() - start)


def host_need(config, images_read_per_s: float) -> dict:
  """What a host of `--chips_per_host` chips at `--mfu` of `--chip_tflops` needs of the input pipeline."""
  from perceiver_jax.tools import flops

  train_tflops = 3 * flops.model_stats(config)["gflops"] / 1000  # Per example: forward + backward.
  examples = _CHIPS_PER_HOST.value * _MFU.value * _CHIP_TFLOPS.value / train_tflops
  images = examples * data.images_per_example(config)
  per_core = images_read_per_s / os.cpu_count()
  return {
    "chips_per_host": _CHIPS_PER_HOST.value,
    "chip_tflops": _CHIP_TFLOPS.value,
    "mfu": _MFU.value,
    "train_tflops_per_example": round(train_tflops, 3),
    "examples_per_s": round(examples, 1),
    "images_read_per_s": round(images, 1),
    "cores_at_measured_rate": round(images / per_core, 1),
  }


def _audio_report(config, train_first: float, train_rate: float, eval_first: float, eval_rate: float) -> dict:
  import jax

  need = host_need(config, train_rate)
  inputs = config.dataset.inputs
  video = "video" in inputs
  return {
    "dataset": config.dataset.name,
    "fake_data": _FAKE_AUDIOSET.value > 0 or _FAKE_VIDEO.value > 0,
    "samples_per_crop": (inputs.audio.shape[0] if "audio" in inputs else 0) if video else inputs.shape[0],
    **(
      {"frames_per_crop": list(inputs.video.shape), "stored_short_side": _SHORT_SIDE.value} if video else {}
    ),
    "sample_rate": config.dataset.sample_rate,
    "eval_windows": config.dataset.get("eval_windows"),
    "process_count": jax.process_count(),
    "train_batch_per_process": config.train.global_batch_size // jax.process_count(),
    "eval_batch_per_process": config.train.eval_batch_size // jax.process_count(),
    "cpu_count": os.cpu_count(),
    "train_clips_per_s": round(train_rate, 1),
    "eval_clips_per_s": round(eval_rate, 1),
    "train_first_batch_s": round(train_first, 2),
    "eval_first_batch_s": round(eval_first, 2),
    "host_need": {**need, "clips_per_s": need["examples_per_s"]},
  }


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  with tempfile.TemporaryDirectory() as tmp:
    if _FAKE.value > 0:
      manual = os.path.join(tmp, "manual")
      tfds_input.write_fake_imagenet(
        manual, train_per_class=_FAKE.value, num_val=3 * _FAKE.value, sizes=_IMAGENET_LIKE_SIZES
      )
      tfds_input.prepare_imagenet(manual, os.path.join(tmp, "data"))
      config.dataset.name, config.dataset.data_dir = tfds_input.IMAGENET_NAME, os.path.join(tmp, "data")
    if _FAKE_AUDIOSET.value > 0:
      from perceiver_jax.data import audioset

      n, rate = _FAKE_AUDIOSET.value, config.dataset.sample_rate
      audioset.write_fake_audioset(os.path.join(tmp, "manual"), 527, {"balanced_train": n, "eval": n // 4})
      audioset.prepare_audioset(
        os.path.join(tmp, "manual"),
        os.path.join(tmp, "data"),
        ("balanced_train", "eval"),
        rate,
        log=logging.info,
      )
      config.dataset.update(name="audioset", data_dir=os.path.join(tmp, "data"), train_split="balanced_train")
    if _FAKE_VIDEO.value > 0:
      from perceiver_jax.data import audioset

      n, rate = _FAKE_VIDEO.value, config.dataset.sample_rate
      sizes = {"balanced_train": n, "eval": max(n // 4, 1)}
      audioset.write_fake_video_audioset(os.path.join(tmp, "manual"), 527, sizes, seconds=10.0)
      start = time.perf_counter()
      _, prepared, _ = audioset.prepare_audioset(
        os.path.join(tmp, "manual"), os.path.join(tmp, "data"), tuple(sizes), rate, log=logging.info,
        video=True, short_side=_SHORT_SIDE.value,
      )  # fmt: skip
      logging.info("prepared %s in %.1f s", prepared, time.perf_counter() - start)
      print(json.dumps({"prepared_clips": prepared, "prepare_s": round(time.perf_counter() - start, 1)}))
      config.dataset.update(name="audioset", data_dir=os.path.join(tmp, "data"), train_split="balanced_train")
    train_first, train_rate = _measure(data.train_batches(config), _NUM_BATCHES.value, _WARMUP.value)
    # Eval passes are chained so that a small split still gives `num_batches` batches.
    evals = itertools.chain.from_iterable(data.eval_batches(config) for _ in itertools.count())
    eval_first, eval_rate = _measure(evals, _NUM_BATCHES.value, _WARMUP.value)
  import jax

  reads = data.images_per_example(config)
  if "sample_rate" in config.dataset:  # Audio clips: no images, no augment section.
    print(json.dumps(_audio_report(config, train_first, train_rate, eval_first, eval_rate)))
    return
  print(
    json.dumps(
      {
        "dataset": config.dataset.name,
        "fake_data": _FAKE.value > 0,
        "image_size": config.dataset.image_size,
        "randaugment": [config.augment.randaugment_layers, config.augment.randaugment_magnitude],
        "mixup_cutmix": [config.augment.mixup_alpha, config.augment.cutmix_alpha],
        "images_per_example": reads,
        "process_count": jax.process_count(),
        "train_batch_per_process": config.train.global_batch_size // jax.process_count(),
        "eval_batch_per_process": config.train.eval_batch_size // jax.process_count(),
        "cpu_count": os.cpu_count(),
        "train_examples_per_s": round(train_rate, 1),
        "train_images_read_per_s": round(train_rate * reads, 1),
        "eval_images_per_s": round(eval_rate, 1),
        "train_first_batch_s": round(train_first, 2),
        "eval_first_batch_s": round(eval_first, 2),
        "host_need": host_need(config, train_rate * reads),
      }
    )
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
