"""Every `config.<section>.<field>` the library reads is declared in every config (and variant) using it."""

import ast
import pathlib

import pytest
from conftest import ROOT, load_config

# Which configs a module's reads apply to: the TFDS input reads only TFDS datasets' configs, the digits
# input only digits, the benchmark only its own; the rest applies to every config that has the section.
_ONLY = {
  "data/tfds_input.py": {"imagenet"},
  "data/digits.py": {"digits"},
  "data/sounds.py": {"sounds"},
  "data/audio_video.py": {"sounds:audio_video"},  # config:word, the configs of that variant word only.
  "data/points.py": {"shapes", "modelnet40"},
  "data/shapes.py": {"shapes"},
  "data/modelnet40.py": {"modelnet40"},
  "data/audioset.py": {"audioset"},
  "data/audio_clips.py": {"audioset"},
  "tools/benchmark.py": {"benchmark"},
}
_VARIANTS = {
  "digits": ["", "permuted", "permuted_random", "learned_pos", "unshared", "runlocal", "reproduce"],
  "imagenet": [
    "",
    "official_recipe",
    "unshared",
    "learned_pos",
    "permuted",
    "cross_attends_at_start",
    "cross_attends_only",
    "runlocal",
    "io_fourier",
    "io_learned",
    "io_conv",
    "io_conv,runlocal",
  ],
  "benchmark": ["", "paper", "bfloat16", "runlocal"],
  "sounds": [
    "",
    "raw",
    "mel",
    "runlocal",
    "mel,runlocal",
    "speech_commands",
    "mel,speech_commands",
    "audio_video",
    "audio_video,runlocal",
  ],
  "audioset": [
    "",
    "raw",
    "mel",
    "runlocal",
    "mel,runlocal",
    "video",
    "audio_video",
    "audio_video_mel",
    "audio_video_mel_tuned",
    "video,runlocal",
    "audio_video_mel_tuned,runlocal",
  ],
  "shapes": ["", "runlocal", "reproduce", "resnet", "vit2", "vit16", "transformer"],
  "modelnet40": ["", "runlocal", "resnet50", "vit_b2", "transformer44", "runlocal,vit_b8"],
}


def _reads() -> dict[str, set[tuple[str, str]]]:
  """(section, field) of every `config.section.field` / `cfg.config.section.field` read, per module."""
  found = {}
  for path in (ROOT / "perceiver_jax").rglob("*.py"):
    reads = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
        base = node.value.value
        named = (isinstance(base, ast.Name) and base.id == "config") or (
          isinstance(base, ast.Attribute) and base.attr == "config"
        )
        if named and not node.attr.startswith("_") and node.attr not in ("to_dict", "update", "get"):
          reads.add((node.value.attr, node.attr))
    found[pathlib.PurePosixPath(path.relative_to(ROOT / "perceiver_jax")).as_posix()] = reads
  return found


def test_the_scan_finds_the_fields_the_tfds_input_reads():
  reads = _reads()["data/tfds_input.py"]
  assert {("dataset", "shuffle_buffer"), ("dataset", "download"), ("augment", "mixup_alpha")} <= reads


@pytest.mark.parametrize("name", sorted(_VARIANTS))
def test_every_field_the_library_reads_is_declared(name):
  reads = _reads()
  for arg in _VARIANTS[name]:
    config = load_config(name, arg or None)
    missing = []
    for module, fields in reads.items():
      only = _ONLY.get(module, {name})
      if name not in only and not any(f"{name}:{word}" in only for word in arg.split(",")):
        continue
      for section, field in fields:
        if section not in config or not hasattr(config[section], "keys"):
          continue  # A section this config has not, or a top-level field read as an attribute chain.
        if section == "model" and config.model_name != "perceiver":
          continue
        if section == "input" and config.input.front_end == "multimodal":
          continue  # Its settings are per modality (input.modalities.<name>), the front ends' arguments.
        if field not in config[section]:
          missing.append(f"{section}.{field} ({module})")
    assert not missing, f"configs/{name}.py:{arg}: {sorted(set(missing))}"


@pytest.mark.parametrize("word", ["learned_pos", "permuted", "permuted_random", "unshared"])
def test_a_variant_word_changes_the_same_fields_in_digits_and_imagenet(word):
  changes = {}
  for name in ("digits", "imagenet"):
    base, varied = load_config(name).to_dict(), load_config(name, word).to_dict()
    changes[name] = {
      (section, field): varied[section][field]
      for section in ("model", "input")
      for field in varied[section]
      if varied[section][field] != base[section].get(field)
    }
  assert changes["digits"] == changes["imagenet"]
