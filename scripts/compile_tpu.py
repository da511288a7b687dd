r"""Compiles the real train and eval steps of a config for a TPU topology, here, with no TPU; one JSON line.

  python scripts/compile_tpu.py --config=configs/imagenet.py --topology=v5e:8x8 --per_chip_batch=16
  python scripts/compile_tpu.py --config=configs/imagenet.py:unshared --topology=v4:4x4x4 --find_max_batch

Fields (perceiver_jax/tools/compile_tpu.py): topology, chip, chips, per_chip_batch, lower_s, compile_s,
per-chip arguments_gb, outputs_gb, temporaries_gb, total_gb and hbm_gb, fits, step_tflops (the traced
step's matmul FLOPs, every repeat counted), XLA's cost estimate of the compiled program (xla_gflops,
xla_gb_accessed, xla_optimal_s: a loop body counted once), and with --find_max_batch max_per_chip_batch
and max_batch_no_fit (the largest batch that fits, and one at most 5% larger that does not).
A case that does not fit prints its JSON with "fits": false and one line on stderr saying what it needs and
what to change. --kernels=cpu compiles the hand-written CPU kernels instead of the plain path, to compare
them on the TPU program. Needs libtpu (pip install -e '.[tpu]'): the one the installed jax's `tpu` extra
pins (the compiler a TPU VM runs; the JSON's `libtpu` says which compiled it); another one is refused in one
line unless --allow_other_libtpu.
"""

import sys

from absl import flags

from perceiver_jax import cli
from perceiver_jax.tools import compile_tpu

_CONFIG = cli.define_config_file("config", None, "Config file[:variants].")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v5e:8x8, v4:4x4x4, v5p:4x4x4.")
_PER_CHIP_BATCH = flags.DEFINE_integer("per_chip_batch", 16, "Training examples per chip.")
_FIND_MAX_BATCH = flags.DEFINE_bool(
  "find_max_batch", False, "Also find the largest per-chip batch that fits (to within 5%; up to 12 compiles)."
)
_KERNELS = flags.DEFINE_enum(
  "kernels", "tpu", ["tpu", "cpu"], "Whose kernels to trace the model with: the TPU's (plain) or the CPU's."
)
_ALLOW_OTHER_LIBTPU = flags.DEFINE_bool(
  "allow_other_libtpu",
  False,
  "Compile with a libtpu other than the one the installed jax pins (its figures are not a TPU VM's).",
)


def main(argv: list[str]) -> None:
  del argv
  try:
    compile_tpu.main(
      _CONFIG.value,
      _TOPOLOGY.value,
      _PER_CHIP_BATCH.value,
      _FIND_MAX_BATCH.value,
      kernels=_KERNELS.value,
      allow_other_libtpu=_ALLOW_OTHER_LIBTPU.value,
    )
  except (compile_tpu.TopologyError, compile_tpu.LibtpuError) as e:
    sys.exit(str(e))  # Already one line that says what to give.


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
