r"""Times the real train step of a config on synthetic data and prints one JSON line.

  python scripts/benchmark.py --config=configs/benchmark.py               # bench-small, float32
  python scripts/benchmark.py --config=configs/benchmark.py:bfloat16
  python scripts/benchmark.py --config=configs/benchmark.py:paper,batch_per_device=1
  python scripts/benchmark.py --config=configs/benchmark.py --config.model.scan_repeats=False

Fields (perceiver_jax/benchmark.py): examples_per_s, step_s (median after warm-up), compile_s,
model_gflops_per_image (3 x the paper-convention forward FLOPs), xla_gflops_per_step (XLA's count, every
repeat counted), matmul_ceiling_gflops (square matmuls on the same devices and dtype, this run), mfu,
peak_host_mb, xla_temp_mb and, on an accelerator, peak_device_mb.
"""

from perceiver_jax import cli
from perceiver_jax.tools import benchmark

_CONFIG = cli.define_config_file("config", None, "Config file[:variants].")


def main(argv: list[str]) -> None:
  del argv
  benchmark.main(_CONFIG.value)


if __name__ == "__main__":
  cli.run(main)
