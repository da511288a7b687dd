"""Video for the AudioSet reader: decoding to 25 fps frames, the paper's train augmentation and eval windows.

Host-side numpy (and PyAV for decoding), no model: standalone functions that a prepare script and a reader
compose. Axes: T frames, H x W pixels, 3 colour channels (RGB); frames are uint8 [T, H, W, 3] as decoded,
float32 in [0, 1] after augmentation.
- `decode(path)`: every video frame of a file (any container and codec PyAV reads: mp4, webm, mkv...), at
  any frame rate and size, resampled in time to `fps` (25, the paper's) by taking, at each output time
  k / fps, the last frame shown at that time, and scaled (PyAV's swscale, bilinear) so that the short side
  is `short_side` pixels, the aspect kept. 256 is our choice: room for the Inception-style crop to 224, and
  a 10 s clip is 250 x 256 x 341 x 3 bytes = 65 MB as raw frames (store them JPEG-encoded on disk).
  `VideoError` names the file when it has no video stream or cannot be decoded.
- `train_window(num_frames, rng)`: a random window of `window` frames (32 = 1.28 s); `window_samples` gives
  the audio samples of the same time, so that sound and picture stay in step.
- `eval_windows(num_frames)`: 16 overlapping windows evenly spaced over the whole clip, as the paper's eval
  (scores averaged per clip by the reader's caller); a clip shorter than a window gets windows at 0, padded.
- `inception_crop`: one crop for the whole clip (area 8-100%, aspect 3/4-4/3, as Inception / the ImageNet
  recipe), resized to `size` (224); `flip`: all frames mirrored with probability 1/2; `colour`: brightness,
  contrast and saturation jitter, one draw per clip (the paper says "colour augmentation"; the strengths are
  ours); `centre_crop` for evaluation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FPS = 25
WINDOW = 32  # Frames: 1.28 s at 25 fps.
NUM_EVAL_WINDOWS = 16


class VideoError(ValueError):
  """A file without a readable video stream."""


def decode(
  path: str, fps: float = FPS, short_side: int = 256, start: float = 0.0, duration: float | None = None
) -> np.ndarray:
  """uint8 [T, H, W, 3] frames of `path` at `fps`, the short side `short_side` pixels (aspect kept).

  `start`, `duration` (seconds from the first frame; None: to the end): only that part, so that a segment
  of a long video is decoded without holding (or scaling) the whole video's frames.
  """
  import av  # Only when video is decoded.

  stop = np.inf if duration is None else start + duration
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise VideoError(f"{path} has no video stream.")
      stream = container.streams.video[0]
      times, frames, first, earlier = [], [], None, []
      for frame in container.decode(stream):
        if frame.time is None:
          continue
        first = float(frame.time) if first is None else first
        t = float(frame.time) - first
        if t > stop + 1.0:  # Past the part (a second's slack for frames decoded out of order).
          break
        if t < start:  # Before the part: only the latest such frame may be shown at its start.
          earlier = [(t, frame)]
          continue
        for t_frame in [*earlier, (t, frame)]:
          w, h = t_frame[1].width, t_frame[1].height
          scale = short_side / min(w, h)
          size = (max(1, round(w * scale)), max(1, round(h * scale)))
          frames.append(t_frame[1].to_ndarray(format="rgb24", width=size[0], height=size[1]))
          times.append(t_frame[0])
        earlier = []
  except av.error.FFmpegError as e:
    raise VideoError(f"{path} cannot be decoded: {e}") from None
  if not frames:
    raise VideoError(
      f"{path} holds no decodable video frame" + (f" from {start:.3f} s on." if start else ".")
    )
  times = np.asarray(times)
  order = np.argsort(times, kind="stable")  # Presentation order (B-frames decode out of it).
  times = times[order]
  end = min(times[-1] + (np.median(np.diff(times)) if len(times) > 1 else 1.0 / fps), stop)
  wanted = np.arange(start, end - 1e-9, 1.0 / fps)  # [T]: the output frames' times
  shown = np.clip(np.searchsorted(times, wanted + 1e-6, side="right") - 1, 0, len(times) - 1)
  return np.stack([frames[order[i]] for i in shown])


def train_window(num_frames: int, rng: np.random.Generator, window: int = WINDOW) -> int:
  """The first frame of a random `window`-frame window of a clip of `num_frames` (0 if it is shorter)."""
  return int(rng.integers(0, max(num_frames - window, 0) + 1))


def eval_windows(num_frames: int, count: int = NUM_EVAL_WINDOWS, window: int = WINDOW) -> np.ndarray:
  """int [count] first frames of `count` windows evenly spaced from the clip's start to its end."""
  return np.linspace(0, max(num_frames - window, 0), count).round().astype(int)


def window_samples(first_frame: int, sample_rate: int, fps: float = FPS) -> int:
  """The audio sample at the time of frame `first_frame`: where that video window's audio window starts."""
  return int(round(first_frame * sample_rate / fps))


def take_window(frames: np.ndarray, first: int, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
  """(frames [window, H, W, 3] from `first`, zero past the clip's end; bool [window] real-frame mask)."""
  clip = frames[first : first + window]
  mask = np.arange(window) < len(clip)
  pad = np.zeros((window - len(clip), *frames.shape[1:]), frames.dtype)
  return np.concatenate([clip, pad]), mask


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def inception_crop(
  frames: np.ndarray,
  rng: np.random.Generator,
  size: int = 224,
  area: tuple[float, float] = (0.08, 1.0),
  aspect: tuple[float, float] = (3 / 4, 4 / 3),
  attempts: int = 10,
) -> np.ndarray:
  """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3]: one random crop for every frame, resized."""
  h, w = frames.shape[1:3]
  for _ in range(attempts):
    target = rng.uniform(*area) * h * w
    ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
    cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      return _resize(frames[:, y : y + ch, x : x + cw], size)
  return centre_crop(frames, size)  # As Inception: the central square when no draw fits.


def centre_crop(frames: np.ndarray, size: int = 224) -> np.ndarray:
  """The central square of side min(H, W), resized to `size`: uint8 [T, size, size, 3]."""
  h, w = frames.shape[1:3]
  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  return _resize(frames[:, y : y + s, x : x + s], size)


def flip(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Every frame mirrored left-right, with probability 1/2."""
  return frames[:, :, ::-1] if rng.random() < 0.5 else frames


def colour(
  frames: np.ndarray,
  rng: np.random.Generator,
  brightness: float = 0.25,
  contrast: float = 0.25,
  saturation: float = 0.25,
) -> np.ndarray:
  """uint8 frames -> float32 in [0, 1] with one brightness, contrast and saturation draw for the clip.

  In that order: x + b; (x - mean) c + mean; grey + (x - grey) s (grey the luma). All three are affine in
  the pixel, so they are applied as one 3 x 3 matrix and one offset (one pass over the clip, not five).
  """
  b = rng.uniform(-brightness, brightness)
  c = rng.uniform(1 - contrast, 1 + contrast)
  s = rng.uniform(1 - saturation, 1 + saturation)
  luma = np.asarray([0.299, 0.587, 0.114], np.float32)
  mixing = s * np.eye(3, dtype=np.float32) + (1 - s) * luma[:, None]  # x @ mixing: the saturation
  mean = frames.mean(dtype=np.float64) / 255.0 + b
  offset = c * b + (1 - c) * mean  # The luma weights sum to 1: a grey offset stays grey.
  out = frames.astype(np.float32) @ (mixing * np.float32(c / 255.0))
  out += np.float32(offset)
  return np.clip(out, 0.0, 1.0, out=out)
