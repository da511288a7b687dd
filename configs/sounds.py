"""The embedded sound default: a small Perceiver tagging synthetic multi-label clips (data/sounds.py).

No download: each clip is 4,096 samples at 4 kHz (1.02 s; real length 50-100% of it, the rest padding,
masked) holding one to three of 8 kinds of event (tones, chirps, band noise, click trains) over background
noise; the task is multi-label (per-class sigmoid cross-entropy, eval mAP), as AudioSet's. Sized for a
2-core CPU: 32 x 64 latents, 2 cross-attends each followed by 2 shared self-attention blocks, AdamW with
warmup and cosine decay, as configs/digits.py.
Variants:
- `raw` (default): 128 patches of 32 samples + 1-D Fourier features (16 bands), the paper's raw-audio input
  at this rate (`input.front_end="audio"`);
- `mel`: 31 frames (256-sample Hann window every 128 samples) x 32 HTK mel bands (20 Hz to 2 kHz) = 992
  log-mel tokens with 2-D Fourier features (8 bands per axis), SpecAugment of 2 spans of up to 4 frames and
  2 of up to 4 bands (`input.front_end="mel"`);
- `speech_commands`: any TFDS audio dataset by name through the same front ends (data/audio_clips.py), here
  TFDS's speech_commands (12 classes, 1 s clips at 16 kHz; built once with `tfds build speech_commands
  --file_format=array_record --data_dir=DATA_DIR`, then `--config.dataset.data_dir=DATA_DIR`): single-label
  (softmax cross-entropy, top-1), each clip resampled to `dataset.sample_rate` (16 kHz: its own), mixed
  to mono, cropped (train: at a random offset; eval: centred) or zero-padded and masked to 16,000 samples
  (1 s); eval on `test`. Another set: --config.dataset.name=spoken_digit (8 kHz; one `train` split, so
  train_split=train[:90%], eval_split=train[90%:]), crema_d, nsynth, with its num_classes;
- `audio_video`: the embedded audio+video miniature (data/audio_video.py: the same 4,096 samples and 16
  frames of 16 x 16 over the same second; 10 classes, 4 heard only, 3 seen only, 3 seen and heard), fused
  as the paper's AudioSet model: the raw-audio tokens above and 2 x 4 x 4 space-time video patches (96
  values + 3-D Fourier features, 4 bands per axis: 123 channels, 128 tokens), each padded with a learned
  modality embedding to 123 + 4 channels (4 for video, 62 for audio: `min_padding_size=4` with the video
  the widest gives the paper's rule), one array of 256 tokens; video dropout 0.3 in training
  (`input.modality_dropout.video`; 0 to train without);
- `runlocal`: a few steps, for tests. Key=value overrides as every config.
"""

import ml_collections

from perceiver_jax import config_args

common = config_args.sibling(__file__, "common")

NUM_SAMPLES = 4096
SAMPLE_RATE = 4000


def _raw_input() -> dict:
  return dict(
    front_end="audio", samples_per_patch=32, position_encoding="fourier", num_bands=16, max_resolution=None
  )


def _mel_input(sample_rate: int = SAMPLE_RATE) -> dict:
  return dict(
    front_end="mel",
    sample_rate=sample_rate,
    frame_length=256,
    frame_step=128,
    num_mel_bins=32,
    lower_hz=20.0,
    upper_hz=None,  # None: Nyquist.
    # Fixed standardisation of log(mel + 1e-6), measured on 256 train clips (mean and std of real frames).
    log_mel_mean=0.3,
    log_mel_std=2.2,
    position_encoding="fourier",  # or "none"
    num_bands=8,
    max_resolution=None,  # None: (frames, bands).
    num_time_masks=2,
    max_time_mask=4,
    num_freq_masks=2,
    max_freq_mask=4,
  )


def _audio_video(c: ml_collections.ConfigDict) -> None:
  c.dataset = ml_collections.ConfigDict(
    dict(
      name="audio_video",
      inputs=dict(
        audio=dict(shape=(NUM_SAMPLES, 1), dtype="float32", masked=True),
        video=dict(shape=(16, 16, 16, 3), dtype="float32", masked=True),  # 16 frames of 16 x 16 (16 fps).
      ),
      sample_rate=SAMPLE_RATE,
      min_fraction=0.5,
      av_presence=0.6,  # How often each stream of a seen-and-heard event shows it.
      blank_streams=(),  # Streams zeroed in eval batches (evaluate.py may set it: ('video',)).
      num_classes=10,
      num_train_examples=8192,
      num_eval_examples=512,
    )
  )
  c.model.num_classes = 10
  c.input = ml_collections.ConfigDict(
    dict(
      front_end="multimodal",
      min_padding_size=4,  # The paper's 4 channels of video embedding (the video is the wider).
      modality_dropout=dict(video=0.3),  # The paper's video dropout.
      modalities=dict(
        audio=_raw_input(),
        video=dict(
          front_end="video",
          patch_size=(2, 4, 4),
          position_encoding="fourier",
          num_bands=4,
          max_resolution=None,
        ),
      ),
    )
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base("multi_label")
  c.model = common.perceiver(num_classes=8, size="small")
  c.input = _raw_input()
  c.dataset = dict(
    name="sounds",
    inputs=dict(shape=(NUM_SAMPLES, 1), dtype="float32", masked=True),
    sample_rate=SAMPLE_RATE,
    min_fraction=0.5,  # The shortest clip, as a fraction of the crop.
    num_classes=8,
    num_train_examples=8192,  # An epoch for the schedule; the stream itself never repeats.
    num_eval_examples=512,
  )
  c.optimizer = common.optimizer(warmup_steps=50)
  c.train = common.train(
    global_batch_size=32, num_steps=600, label_smoothing=0.0, eval_every=300, eval_batch_size=128
  )
  c.checkpoint = common.checkpoint(every=300, keep=2)

  def speech_commands(c):
    c.task = "single_label"
    c.model.num_classes = 12
    c.dataset.update(
      name="speech_commands",
      data_dir=ml_collections.config_dict.placeholder(str),  # The TFDS data directory that holds it.
      inputs=dict(shape=(16_000, 1), dtype="float32", masked=True),
      sample_rate=16_000,
      num_classes=12,
      train_split="train",
      eval_split="test",
      eval_windows=ml_collections.config_dict.placeholder(int),  # None: one centred window per clip.
      num_train_examples=85_511,
      num_eval_examples=4_890,
    )
    if "sample_rate" in c.input:  # mel, whichever word came first.
      c.input.sample_rate = 16_000

  def runlocal(c):
    common.runlocal_steps(c)
    c.dataset.num_eval_examples = 64

  variants = {
    "raw": lambda c: setattr(c, "input", ml_collections.ConfigDict(_raw_input())),
    "mel": lambda c: setattr(c, "input", ml_collections.ConfigDict(_mel_input(c.dataset.sample_rate))),
    "speech_commands": speech_commands,
    "audio_video": _audio_video,
    "runlocal": runlocal,
  }
  return config_args.apply_arg(c, arg, variants)
