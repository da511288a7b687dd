r"""Where the log-mel spectrogram is cheapest: tf.signal on a host core against the chip's compiled cost.

  python scripts/spectrogram_cost.py --config=configs/audioset.py:mel --topology=v5e:8x8 --per_chip_batch=8

Prints one JSON line (perceiver_jax/tools/spectrogram_cost.py): `host_clips_per_s` (log-mel spectrograms of
the config's crop per second through tf.signal, TensorFlow held to --threads threads: per host core with
the default 1), the spectrogram of --per_chip_batch clips compiled alone for one chip of --topology
(`spectrogram_gflops`, `spectrogram_gb_accessed`: XLA's cost analysis; needs libtpu, as
scripts/compile_tpu.py), and `host_need_clips_per_s` (what a host of --chips_per_host chips at --mfu of
--chip_tflops trains on). --nodevice leaves the TPU compile out.
"""

import json

from absl import flags

from perceiver_jax import cli
from perceiver_jax.tools import spectrogram_cost

_CONFIG = cli.define_config_file("config", None, "A mel config, e.g. configs/audioset.py:mel.")
_TOPOLOGY = flags.DEFINE_string(
  "topology", "v5e:8x8", "TPU topology whose chip the spectrogram compiles for."
)
_PER_CHIP_BATCH = flags.DEFINE_integer("per_chip_batch", 8, "Clips per chip.", lower_bound=1)
_DEVICE = flags.DEFINE_bool("device", True, "Compile the spectrogram for the TPU chip (needs libtpu).")
_HOST_BATCH = flags.DEFINE_integer("host_batch", 32, "Clips per tf.signal call.", lower_bound=1)
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Seconds timed on the host.")
_THREADS = flags.DEFINE_integer("threads", 1, "TensorFlow threads (intra- and inter-op).", lower_bound=1)
_CHIPS_PER_HOST = flags.DEFINE_integer("chips_per_host", 4, "Chips per host, for host_need.")
_CHIP_TFLOPS = flags.DEFINE_float("chip_tflops", 197.0, "Peak TFLOP/s of one chip (v5e bf16), for host_need.")
_MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed, for host_need.")


def main(argv):
  del argv
  config = _CONFIG.value
  # The host first: TensorFlow's thread counts are fixed when its runtime starts.
  result = spectrogram_cost.host_clips_per_second(config, _HOST_BATCH.value, _SECONDS.value, _THREADS.value)
  result.update(spectrogram_cost.host_need(config, _CHIPS_PER_HOST.value, _CHIP_TFLOPS.value, _MFU.value))
  if _DEVICE.value:
    result.update(spectrogram_cost.device_cost(config, _TOPOLOGY.value, _PER_CHIP_BATCH.value))
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
