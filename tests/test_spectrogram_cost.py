"""The host alternative measured by tools/spectrogram_cost.py computes what the mel front end computes."""

import haiku as hk
import jax
import numpy as np
from conftest import load_config

from perceiver_jax.tools import spectrogram_cost
from perceiver_jax.training import build


def test_host_tf_signal_log_mel_equals_the_front_ends_at_the_papers_size():
  config = load_config("audioset", "mel")  # 61,440 samples at 48 kHz: 50 frames x 96 bands.
  rng = np.random.default_rng(0)
  t = np.arange(61_440) / 48_000
  clips = np.stack([0.1 * rng.standard_normal(61_440), np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
  host = spectrogram_cost.host_log_mel(config)(clips).numpy()
  device = jax.jit(hk.transform(lambda s: build.front_end(config).spectrogram(s)).apply)({}, None, clips)
  assert host.shape == (2, 50, 96)
  # float32 FFTs of 2,048 points in two libraries; log values of order 10.
  np.testing.assert_allclose(host, np.asarray(device), atol=2e-3)
  assert np.abs(host[0] - host[1]).max() > 1.0  # Noise and a tone differ: the comparison compares something.
