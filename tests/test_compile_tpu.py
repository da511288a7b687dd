"""The deviceless TPU compile (perceiver_jax/compile_tpu.py): fields, memory, FLOPs, bf16, and the misfit."""

import importlib.metadata
import json
import math
import os
import re
import sys

import jax
import pytest
from conftest import ROOT, load_config, run

from perceiver_jax.tools import compile_tpu, flops
from perceiver_jax.training import parallel, train

# Integration tests: subprocesses, TPU compiles or a trained reference run.
pytestmark = pytest.mark.slow

FIELDS = (
  "topology", "chip", "chips", "devices_per_chip", "hosts", "per_chip_batch", "global_batch", "precision",
  "remat", "lower_s", "compile_s", "eval_compile_s", "arguments_gb", "outputs_gb", "aliased_gb",
  "temporaries_gb", "code_gb", "total_gb", "eval_total_gb", "hbm_gb", "usable_hbm_gb", "fits",
  "step_tflops", "model_gflops_per_image", "advice", "kernels", "xla_gflops", "xla_gb_accessed",
  "xla_optimal_s", "libtpu",
)  # fmt: skip


def _local_config(config_loader, arg=""):
  return config_loader("imagenet", ",".join(w for w in ("runlocal", arg) if w))


@pytest.fixture(scope="module")
def bf16_v5e(request):
  config = load_config("imagenet", "runlocal,precision=bfloat16,remat=True")
  return config, compile_tpu.compile_for_topology(config, "v5e:2x2", 2, keep_compiled=True)


def _check_fields(result, config, topology, chips, hosts):
  assert set(FIELDS) <= set(result)
  devices = compile_tpu.topology_devices(topology)
  assert (result["topology"], result["chips"], result["hosts"]) == (topology, chips, hosts)
  assert result["chip"] == devices[0].device_kind
  assert result["devices_per_chip"] * chips == len(devices)
  assert result["global_batch"] == result["per_chip_batch"] * chips
  assert result["hbm_gb"] == pytest.approx(compile_tpu.HBM_GB_PER_CHIP[result["chip"]])
  assert result["lower_s"] > 0 and result["compile_s"] > 0 and result["eval_compile_s"] > 0
  parts = result["arguments_gb"] + result["outputs_gb"] - result["aliased_gb"] + result["temporaries_gb"]
  assert result["total_gb"] == pytest.approx(parts + result["code_gb"])
  assert 0 < result["eval_total_gb"] and 0 < result["total_gb"] < result["hbm_gb"]
  assert result["fits"] is True and result["advice"] is None
  assert result["libtpu"] == importlib.metadata.version("libtpu")  # The compiler's version.
  # XLA's cost estimate of the compiled program (a loop body counted once).
  assert result["kernels"] == "tpu"
  assert result["xla_gflops"] > 0 and result["xla_gb_accessed"] > 0 and result["xla_optimal_s"] > 0
  # The compiled program's arguments are the replicated state and this device's shard of the batch (in
  # the TPU's tiled layout, which pads small arrays: at least their bytes).
  trainer = train.Trainer(
    compile_tpu.step_config(config, result["global_batch"]),
    mesh=parallel.make_mesh(devices),
    total_steps=1000,
  )
  state, batch, _, _ = compile_tpu.abstract_inputs(trainer, result["global_batch"])
  want = result["devices_per_chip"] * compile_tpu._argument_bytes(state, batch, len(devices)) / 1e9
  assert want <= result["arguments_gb"] < 4 * want
  # The donated state comes back in place: at least its bytes alias, and no more than the arguments.
  state_gb = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)) / 1e9
  assert result["devices_per_chip"] * state_gb <= result["aliased_gb"] <= result["arguments_gb"]


def test_v5e_2x2_fields_memory_and_flops(bf16_v5e):
  config, result = bf16_v5e
  _check_fields(result, config, "v5e:2x2", chips=4, hosts=1)
  assert result["precision"] == "bfloat16" and result["remat"] is True
  # Every repeat counted: the scanned step's count equals that of the same step unrolled, traced for the
  # same per-device batch on 4 CPU devices with the TPU's kernels.
  unrolled = compile_tpu.step_config(config, result["global_batch"])
  unrolled.model.scan_repeats = False
  trainer = train.Trainer(
    unrolled, mesh=parallel.make_mesh(jax.devices()[:4]), total_steps=1000, platform="tpu"
  )
  state, batch, _, _ = compile_tpu.abstract_inputs(trainer, result["global_batch"])
  assert result["step_tflops"] == pytest.approx(
    4 * flops.jaxpr_matmul_flops(trainer.train_step, state, batch) / 1e12
  )


def _operand_types(hlo: str, op: str):
  """The element types of the operands of every `op` instruction in HLO text (names are module-unique)."""
  defined = dict(re.findall(r"(%[\w.-]+) = \(?(\w+)\[", hlo))
  types = []
  for operands in re.findall(rf"= \w+\[[^=]*? {op}\(([^)]*)\)", hlo):
    types.append(tuple(defined.get(name) for name in re.findall(r"%[\w.-]+", operands)))
  return types


def test_bfloat16_is_read_from_the_compiled_tpu_program(bf16_v5e):
  config, result = bf16_v5e
  hlo = result["_compiled"].as_text()
  entry = hlo[hlo.index("ENTRY") :]
  # Parameters (and optimizer state): every float argument of the program is float32.
  arguments = re.findall(r"\b(bf16|f32|f16)\[[0-9,]*\][^ ]* parameter\(", entry)
  assert arguments and set(arguments) == {"f32"}
  # Matmuls in bfloat16: the TPU program's products (convolutions) all take bf16 operands.
  products = _operand_types(hlo, "convolution") + _operand_types(hlo, "dot")
  assert len(products) >= 10
  assert all(t and set(t) == {"bf16"} for t in products), [t for t in products if set(t) != {"bf16"}]
  # Logits and loss in float32: the softmax over the classes exponentiates float32 [b, classes] values.
  b, classes = result["global_batch"] // result["chips"], config.dataset.num_classes
  assert re.search(rf"f32\[{b},{classes}\]\S* exponential\(", hlo)
  assert not re.search(rf"bf16\[{b},{classes}\]\S* exponential\(", hlo)


def test_the_cpu_kernels_compile_for_the_tpu_to_be_compared(bf16_v5e):
  # The hand-written CPU kernels pin layouts with optimization barriers (gone once XLA has scheduled the
  # program): the traced step has them with kernels="cpu" only, and the compiled programs differ.
  config, plain = bf16_v5e
  cpu = compile_tpu.compile_for_topology(
    config, "v5e:2x2", 2, eval_step=False, keep_compiled=True, kernels="cpu"
  )
  assert cpu["kernels"] == "cpu" and cpu["fits"] and cpu["step_tflops"] == pytest.approx(plain["step_tflops"])
  assert cpu["_compiled"].as_text() != plain["_compiled"].as_text()
  devices = compile_tpu.topology_devices("v5e:2x2")
  for kernels, barriers in (("cpu", True), ("tpu", False)):
    trainer = train.Trainer(
      compile_tpu.step_config(config, 8), mesh=parallel.make_mesh(devices), total_steps=10, platform=kernels
    )
    state, batch, _, _ = compile_tpu.abstract_inputs(trainer, 8)
    assert ("optimization_barrier" in str(jax.make_jaxpr(trainer.train_step)(state, batch))) is barriers


def test_sixteen_chips_on_four_hosts(config_loader, capsys):
  config = _local_config(config_loader)
  result = compile_tpu.main(config, "v5e:4x4", 2, max_batch=False)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads(json.dumps(result))
  _check_fields(printed, config, "v5e:4x4", chips=16, hosts=4)


def test_a_misfit_says_what_it_needs_and_the_largest_batch_that_fits(config_loader, capsys):
  # runlocal at 224 px (50,176 tokens): small to compile, large in memory.
  config = _local_config(config_loader, "dataset.image_size=224,input.max_resolution=224,remat=False")
  result = compile_tpu.main(config, "v5e:2x2", 2048, max_batch=True)
  out, err = capsys.readouterr()
  assert json.loads(out.strip().splitlines()[-1])["fits"] is False
  assert result["fits"] is False and result["total_gb"] > result["usable_hbm_gb"] > 0
  assert result["temporaries_gb"] > 0 and result["arguments_gb"] > 0
  best, no_fit = result["max_per_chip_batch"], result["max_batch_no_fit"]
  assert 0 < best < no_fit <= max(best + 1, math.ceil(1.05 * best)) <= 2048  # Bracketed within 5%.
  assert 3 <= result["max_batch_compiles"] <= 8
  line = err.strip().splitlines()[-1]
  assert line == result["advice"] and "Traceback" not in err
  assert f"needs {result['total_gb']:.2f} GB" in line and f"--per_chip_batch={best}" in line
  assert "remat=True" in line and "cross_attention_chunk_size" in line
  # The batch found fits in the chip's HBM and uses more than half of what the compiler reported as available.
  assert result["usable_hbm_gb"] / 2 < result["max_batch_total_gb"] <= result["hbm_gb"]


def test_bad_topologies_and_batches_say_what_to_give(config_loader):
  config = _local_config(config_loader)
  with pytest.raises(compile_tpu.TopologyError, match="give e.g. 'v5e:2x2'"):
    compile_tpu.compile_for_topology(config, "v9x:2x2", 2)
  with pytest.raises(compile_tpu.TopologyError, match="positive multiple of the 1 devices per TPU v4 chip"):
    compile_tpu.compile_for_topology(config, "v4:2x2x1", 0)


def test_v4_and_v5p_chips_are_one_device_each_as_on_a_tpu_vm():
  # Megacore: JAX drives a v4 or v5p chip's two TensorCores as one device; its meshes refuse anything else.
  for name in ("v4:4x4x4", "v5p:2x2x1", "v5e:2x2"):
    devices = compile_tpu.topology_devices(name)
    assert len(devices) == compile_tpu.num_chips(name)
    assert len({tuple(d.coords) for d in devices}) == len(devices)  # One device at each chip's place.
  parallel.make_mesh(compile_tpu.topology_devices("v4:4x4x4"))


def test_chunked_attention_compiles_in_the_data_parallel_step(config_loader):
  # The online softmax's scan starts from constants: under shard_map they must be typed as varying over
  # the batch axis, as its step's outputs are (runlocal: 1,024 tokens in chunks of 100).
  config = _local_config(config_loader, "cross_attention_chunk_size=100")
  result = compile_tpu.compile_for_topology(config, "v5e:2x2", 2, eval_step=False, count_flops=False)
  assert result["fits"] is True


def test_another_libtpu_is_refused_in_one_line_before_compiling(tmp_path):
  # An installed libtpu 0.0.52 (its metadata first on the path): the documented command prints no JSON and
  # one line; --allow_other_libtpu goes on to the compile (here to a topology error, before compiling).
  fake = tmp_path / "libtpu-0.0.52.dist-info"
  fake.mkdir()
  (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: libtpu\nVersion: 0.0.52\n")
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(filter(None, (str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")))),
  )
  cmd = [
    sys.executable,
    "scripts/compile_tpu.py",
    "--config=configs/imagenet.py:runlocal",
    "--per_chip_batch=2",
  ]
  refused = run([*cmd, "--topology=v5e:2x2"], env)
  assert refused.returncode == 1 and refused.stdout == "" and "Traceback" not in refused.stderr
  pinned = compile_tpu.toolchain.required_libtpu()
  assert refused.stderr.strip().splitlines() == [
    f"libtpu 0.0.52 is installed, but jax[tpu]=={jax.__version__} runs TPUs with libtpu{pinned}: its "
    f"compiler's figures would not be the pod's. pip install 'libtpu{pinned}', or pass --allow_other_libtpu "
    "to compile with this one anyway."
  ]
  allowed = run([*cmd, "--topology=v9x:2x2", "--allow_other_libtpu"], env)
  assert allowed.returncode == 1 and "Traceback" not in allowed.stderr
  assert allowed.stderr.strip().splitlines()[-1].startswith("Cannot build TPU topology 'v9x:2x2'")
