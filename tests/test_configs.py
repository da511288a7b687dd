"""Every config in configs/ and every variant word it knows resolves to a config the trainer accepts."""

import pathlib

import pytest
from conftest import ROOT

from perceiver_jax import config_args
from perceiver_jax.training import train

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "common")


def _words(module) -> list[str]:
  """The variant words `module.get_config` knows: those its unknown-word error lists."""
  with pytest.raises(config_args.UnknownVariant) as error:
    module.get_config("no_such_word")
  return error.value.known


def test_common_is_the_only_file_in_configs_without_get_config():
  modules = {p.stem: config_args.config_module(str(p)) for p in (ROOT / "configs").glob("*.py")}
  assert sorted(name for name, m in modules.items() if hasattr(m, "get_config")) == CONFIGS
  assert set(modules) - set(CONFIGS) == {"common"}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variant_word_alone_and_before_runlocal_resolves_to_a_valid_config(name):
  module = config_args.config_module(str(ROOT / "configs" / f"{name}.py"))
  words = _words(module)
  assert "runlocal" in words
  for arg in [None, *words, *(f"{w},runlocal" for w in words if w != "runlocal")]:
    config = module.get_config(arg)
    try:
      train.validate_config(config)
    except Exception as e:  # noqa: BLE001  Name the config that failed.
      pytest.fail(f"configs/{name}.py:{arg}: {type(e).__name__}: {e}")
    assert config.config_arg == (arg or "")
    if config.model_name != "perceiver":  # A baseline replaced the model: its own classes, the dataset's.
      assert config.model.num_classes == config.dataset.num_classes, arg
  # After runlocal a word still resolves (ImageNet's recipe words then set epochs again: `word,runlocal`).
  for word in words:
    assert module.get_config(f"runlocal,{word}").config_arg == f"runlocal,{word}"


def test_common_refuses_a_field_it_does_not_have():
  common = config_args.config_module(str(ROOT / "configs" / "common.py"))
  with pytest.raises(ValueError, match="optimizer has no field learning_rat"):
    common.optimizer(learning_rat=1.0)
  with pytest.raises(ValueError, match="needs a size or"):
    common.perceiver(num_classes=3, num_latents=8)
  assert pathlib.Path(common.__file__).name == "common.py"


# Item: one config loader and one-line errors through every entry point. The forks share one process's
# imports, so each entry point's flag parsing costs milliseconds, not a Python start-up with JAX.
_FORKS = r"""
import json, os, runpy, sys
import jax, matplotlib.figure  # noqa: F401  Imported once, before the forks.
from perceiver_jax.tools import benchmark, compile_tpu, flops, sweep  # noqa: F401
from perceiver_jax.training import train  # noqa: F401
results = []
for argv in json.loads(sys.argv[1]):
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(read)
    os.dup2(write, 1)
    os.dup2(write, 2)
    sys.argv = argv
    code = 0
    try:
      runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:  # As the interpreter ends: a message on stderr and status 1.
      if e.code is not None and not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
      code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # noqa: BLE001
      import traceback
      traceback.print_exc()
      code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  os.close(write)
  with os.fdopen(read, "rb") as f:
    out = f.read().decode()
  results.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out])
print(json.dumps(results))
"""

# Each entry point that takes --config, with the flags it needs besides.
_ENTRY_POINTS = {
  "experiments/train.py": ["--workdir={tmp}/w"],
  "scripts/compile_tpu.py": [],
  "scripts/benchmark.py": [],
  "scripts/model_stats.py": [],
  "scripts/visualize_augment.py": ["--out={tmp}/a.png"],
  "scripts/sweep.py": ["--sweep=seed=0,1", "--workdir_root={tmp}/s", "--launcher=print"],
}
_BAD = {
  "path": (["--config=configs/no_such_config.py"], "No such file: config 'configs/no_such_config.py'"),
  "word": (["--config=configs/digits.py:runlocal,no_such_word"], "Unknown config variant 'no_such_word'"),
  "field": (
    ["--config=configs/digits.py:runlocal", "--config.model.latent_chanels=3"],
    "--config.model.latent_chanels names no config field; nearest: model.latent_channels",
  ),
}


def test_a_bad_config_path_word_or_field_is_one_line_through_every_entry_point(tmp_path):
  import json
  import subprocess
  import sys

  from conftest import child_env

  cases = [
    (script, bad, [script, *args, *(a.format(tmp=tmp_path) for a in extra)])
    for script, extra in _ENTRY_POINTS.items()
    for bad, (args, _) in _BAD.items()
  ]
  done = subprocess.run(
    [sys.executable, "-c", _FORKS, json.dumps([argv for *_, argv in cases])],
    cwd=ROOT,
    env=child_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  for (script, bad, _), (code, out) in zip(cases, json.loads(done.stdout.splitlines()[-1]), strict=True):
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code in (1, 2) and "Traceback" not in out, (script, bad, code, out[-2000:])
    assert len(errors) == 1 and _BAD[bad][1] in errors[0], (script, bad, out[-2000:])
  assert not any(tmp_path.iterdir())  # Refused before anything was written.


def test_every_entry_point_takes_its_config_through_cli():
  import ast

  takers = []
  for path in sorted([*(ROOT / "scripts").glob("*.py"), *(ROOT / "experiments").glob("*.py")]):
    tree = ast.parse(path.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    names = {ast.unparse(call.func) for call in calls}
    assert not any("config_flags" in name for name in names) and "app.run" not in names, path
    config_flag = [
      c for c in calls if c.args and ast.unparse(c.args[0]) == "'config'" and "DEFINE" in ast.unparse(c.func)
    ]
    if "cli.define_config_file" in names:
      takers.append(path.name)
      assert "cli.run" in names, path  # cli.parse_flags sets its overrides aside and loads it.
    # A `--config` string flag (sweep's, convert's): read by config_args or cli, never by its own loader.
    assert not config_flag or not any("spec_from_file_location" in name for name in names), path
  assert {"train.py", "compile_tpu.py", "benchmark.py", "benchmark_input.py", "model_stats.py"} <= set(takers)
