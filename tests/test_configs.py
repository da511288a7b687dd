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
