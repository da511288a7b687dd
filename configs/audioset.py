"""The paper's AudioSet model (Table 3): a Perceiver on 1.28 s of raw audio (or its log-mel spectrogram).

Where each value comes from ("paper": Jaegle et al. 2021, Sec. 4.2 and App. A, ../shared/PAPER.md; "ImageNet":
configs/imagenet.py's value, which the paper's "a faster version of the ImageNet model" inherits; "ours":
the paper is silent):
- model: 512 x 1024 latents, 1 cross-attend head, 8 self-attention heads, widening 1: ImageNet. 2
  cross-attends (not 8), each followed by a latent Transformer of 8 self-attention blocks (not 6), no weight
  sharing: paper.
- task multi_label (sigmoid cross-entropy per class, eval mAP over [examples, classes]), 527 classes: paper.
- dataset.inputs: 61,440 mono samples at 48 kHz (1.28 s), masked for clips shorter than the crop: paper
  (the mask: ours).
- `raw` (default): 480 patches of 128 samples: paper. Fourier features of the patch's time: 64 bands and
  max_resolution 480 (the patch count): ours (the paper gives no audio bands).
- `mel`: 96 HTK mel bands x 50 frames (2,048-sample Hann window every 1,200 samples, 20 Hz to 24 kHz) = the
  paper's 4,800 inputs; the window, hop, bands and range are ours. 2-D Fourier features, 32 bands per axis,
  max_resolution (50, 96): ours. SpecAugment (paper: on, settings silent): 2 time masks of up to 5 frames
  and 2 frequency masks of up to 10 bands: ours. log_mel_mean/std: ours, to be measured on the data.
  The spectrogram is computed on the device, in the train step (ours): compiled alone for a v5e chip, 8
  clips cost 0.81 GFLOP and 0.26 GB accessed, 0.03% of the step's FLOPs and at most 0.4% of its bytes,
  where tf.signal on the host makes 730-1,030 clips/s per core against the 819 clips/s a 4-chip v5e host
  trains on at 40% of peak: about a core per host (README, Sound; scripts/spectrogram_cost.py).
- optimizer: LAMB, weight decay 0.1, clip 10, b1 0.9, b2 0.999: ImageNet's recipe. Learning rate 2e-3 with
  a 1,000-step warmup and cosine decay: ours (the paper is silent on rate, schedule and batch).
- train: 100 epochs: paper. global_batch_size 512: ours. An epoch: dataset.num_train_examples = 1,771,873,
  AudioSet's unbalanced + balanced train lists (the paper: "1.7M"); set it to the clips you have.
- label_smoothing 0: ours (multi-hot targets).
- dataset (data/audio_clips.py): `name="audioset"` reads DATA_DIR/audioset_clips/48000hz/, built once by
  `python scripts/prepare_audioset.py --manual_dir=DIR --data_dir=DATA_DIR` (set `data_dir` to that DATA_DIR);
  sample_rate 48,000: paper. train_split `balanced_train+unbalanced_train`: the paper's 1.7M clips (ours:
  `balanced_train` alone for a quick run, and num_train_examples to match). eval_split `eval` (20,371 listed;
  fewer once missing clips are left out): the paper's evaluation set. Training crops a random 1.28 s window
  of each clip: paper. eval_windows 16: the paper's 16 overlapping windows covering the clip, scores
  averaged per clip (mean of the sigmoids: ours, the paper says "averages the scores"); eval_batch_size 64
  clips (1,024 windows a step): ours, to keep a host's eval batch (16 x 61,440 float32 per clip) small.
Video and audio+video (Table 3's other two columns; `dataset.inputs` a mapping {modality: array}, the
reader serves each named stream; `input.front_end="multimodal"`):
- `video`: {video: 32 frames of 224 x 224 RGB, masked past a short clip's end}: paper (25 fps, 1.28 s). 2 x 8
  x 8 space-time patches, 12,544 tokens of 384 values: paper. 3-D Fourier features of (t, y, x) on the patch
  grid: paper; 32 bands per axis (Perceiver IO's video setting) and max_resolution (16, 28, 28), the patch
  grid: ours (the paper is silent). min_padding_size 0: one modality needs no embedding.
- `audio_video`: {audio: the `raw` input above, video: as `video`}, each token padded with a learned
  modality embedding to one width: paper. With min_padding_size=4 and the video the wider (384 + 195 = 579
  channels against 128 + 129 = 257), the video gets exactly the paper's 4 channels and the audio 326,
  "as many as make the two arrays equally wide": 13,024 tokens of 583. Video dropout: the whole video of an
  example zeroed with probability 0.3 in training (`input.modality_dropout`): paper.
- `audio_video_mel`: the audio as `mel` (4,800 tokens of 1 + 130, SpecAugment on): paper; embedding 452
  channels; 17,344 tokens of 583.
- `audio_video_mel_tuned`: the paper's tuned mel model (44.2): SpecAugment off, the spectrogram dropped with
  probability 0.1 besides the video's 0.3: paper.
For the video variants the model recomputes every block in the backward pass (`model.remat=True`, as
configs/imagenet.py: ours, for memory) and the global batch stays 512 (8 per chip on a v5e:8x8: ours).
Variants: `raw` (default), `mel`, the four above, `runlocal` (a tiny model on synthetic clips, a few steps;
after a video variant, 4 frames of 32 x 32).
"""

import ml_collections

from perceiver_jax import config_args

common = config_args.sibling(__file__, "common")

NUM_SAMPLES = 61_440  # 1.28 s at 48 kHz.


def _raw_input() -> dict:
  return dict(
    front_end="audio", samples_per_patch=128, position_encoding="fourier", num_bands=64, max_resolution=480
  )


def _mel_input() -> dict:
  return dict(
    front_end="mel",
    sample_rate=48_000,
    frame_length=2048,
    frame_step=1200,
    num_mel_bins=96,
    lower_hz=20.0,
    upper_hz=None,
    log_mel_mean=-6.0,
    log_mel_std=5.0,
    position_encoding="fourier",
    num_bands=32,
    max_resolution=(50, 96),
    num_time_masks=2,
    max_time_mask=5,
    num_freq_masks=2,
    max_freq_mask=10,
  )


def _video_input() -> dict:
  return dict(
    front_end="video", patch_size=(2, 8, 8), position_encoding="fourier", num_bands=32, max_resolution=None
  )


VIDEO = dict(shape=(32, 224, 224, 3), dtype="float32", masked=True)  # 1.28 s at 25 fps.


def _fused(audio: dict | None, dropout: dict) -> dict:
  """The multimodal `input` section of a video variant; `audio` None: the video alone."""
  modalities = dict(video=_video_input())
  if audio is not None:
    modalities["audio"] = audio
  return dict(
    front_end="multimodal",
    min_padding_size=4 if audio is not None else 0,  # The paper's 4 channels of video embedding.
    modality_dropout=dropout,
    modalities=modalities,
  )


def _video_variant(audio: dict | None, dropout: dict):
  def apply(c: ml_collections.ConfigDict) -> None:
    inputs = dict(video=VIDEO)
    if audio is not None:
      inputs["audio"] = dict(shape=(NUM_SAMPLES, 1), dtype="float32", masked=True)
    c.dataset.inputs = ml_collections.ConfigDict(inputs)
    c.input = ml_collections.ConfigDict(_fused(audio, dropout))
    c.model.remat = True

  return apply


def _tuned_mel_input() -> dict:
  return dict(_mel_input(), num_time_masks=0, num_freq_masks=0)  # The tuned model: SpecAugment off.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base("multi_label")
  # ImageNet's model with 2 cross-attends (not 8), each followed by 8 self-attention blocks (not 6), unshared.
  c.model = common.perceiver(
    num_classes=527,
    size="paper",
    num_latent_transformers=2,
    num_cross_attends=2,
    num_self_attends_per_block=8,
    share_cross_attends=False,
    share_latent_transformers=False,
  )
  c.input = _raw_input()
  c.dataset = dict(
    name="audioset",
    data_dir=ml_collections.config_dict.placeholder(str),  # The DATA_DIR of prepare_audioset.py.
    inputs=dict(shape=(NUM_SAMPLES, 1), dtype="float32", masked=True),
    sample_rate=48_000,
    train_split="balanced_train+unbalanced_train",
    eval_split="eval",
    eval_windows=16,  # Scores averaged over 16 windows per eval clip (None: one centred window).
    num_classes=527,
    num_train_examples=1_771_873,
    num_eval_examples=20_371,
  )
  c.optimizer = common.optimizer(**common.LAMB, learning_rate=2e-3, warmup_steps=1000)
  c.train = common.train(
    global_batch_size=512, num_epochs=100, label_smoothing=0.0, eval_every=10_000, eval_batch_size=64
  )
  c.checkpoint = common.checkpoint(every=2000)

  def runlocal(c):
    if c.input.front_end == "multimodal":  # A video variant: 4 frames of 32 x 32, 4 bands per modality.
      c.model.update(num_latents=16, latent_channels=32, num_self_attends_per_block=1, num_self_heads=2)
      c.model.remat = False
      for entry in c.input.modalities.values():
        entry.num_bands = 4
      c.dataset.inputs.video.shape = (4, 32, 32, 3)
    else:
      common.tiny_perceiver(c)
    c.dataset.update(name="synthetic", num_train_examples=64, num_eval_examples=8, eval_windows=4)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=1)
    common.tiny_steps(c)

  variants = {
    "raw": lambda c: setattr(c, "input", ml_collections.ConfigDict(_raw_input())),
    "mel": lambda c: setattr(c, "input", ml_collections.ConfigDict(_mel_input())),
    "video": _video_variant(None, {}),
    "audio_video": _video_variant(_raw_input(), dict(video=0.3)),
    "audio_video_mel": _video_variant(_mel_input(), dict(video=0.3)),
    "audio_video_mel_tuned": _video_variant(_tuned_mel_input(), dict(video=0.3, audio=0.1)),
    "runlocal": runlocal,
  }
  return config_args.apply_arg(c, arg, variants)
