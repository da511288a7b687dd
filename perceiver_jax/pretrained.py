"""DeepMind's released Perceiver IO ImageNet classifiers, loaded into this project's model.

DeepMind published three checkpoints with Perceiver IO (Jaegle et al. 2021b), read by its ImageNet colab
(deepmind-research, perceiver/colabs/imagenet_classification.ipynb):
- `imagenet_fourier_position_encoding.pystate`: pixels + Fourier features (79.0% top-1 in the paper),
- `imagenet_learned_position_encoding.pystate`: a 1x1 convolution + a projected learned position table
  (72.7%),
- `imagenet_conv_preprocessing.pystate`: 7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max-pool + Fourier
  features (82.1%).
Each is a pickle of `{'params': {module: {name: array}}, 'state': {...}}` (containers plain dicts or, as
2021 Haiku pickled them, Haiku's `FlatMapping`).

`load_official(path)` returns `(config, params, state)` for `build.make_model(config)`: the encoder is this
project's Perceiver with one cross-attend and `head='decoder'`, the front end `image` (Fourier, learned) or
`image_conv` (conv). The architecture is read from the checkpoint's shapes; what shapes cannot tell (the
repeats of the weight-shared latent Transformer, the heads, the training image size) is the released
networks' (8, 8 self-attention heads, 1 cross-attention head, 224) unless given. Inputs are normalised as
DeepMind's colab does: (pixel - 255 mean) / (255 std) per channel, ImageNet's mean and std, 0..255 pixels.

The file is a pickle, so it is read with an unpickler that allows only what such a checkpoint holds (dicts,
numpy arrays and dtypes, Haiku's FlatMapping read as a dict): every global the pickle names is checked
before anything is unpickled, and the unpickler itself refuses any other (`UnsafeCheckpointError`).

One mapping of channels: the official Fourier features are [positions, sines, cosines] and this project's
`position_encoding.fourier_features` are [sines, cosines, positions] (same sines and cosines, row axis before
column axis, bands in increasing frequency). The rows of the encoder cross-attend's input-side parameters
(its input LayerNorm and key/value projections) are permuted to match (`_fourier_channel_order`).
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from perceiver_jax.training import build

KINDS = {
  "fourier": "pixels + Fourier features (imagenet_fourier_position_encoding)",
  "learned": "1x1 conv + learned positions (imagenet_learned_position_encoding)",
  "conv": "conv + max-pool + Fourier features (imagenet_conv_preprocessing)",
}
_EXPECTED = "a Perceiver IO ImageNet checkpoint (.pystate: a pickle of {'params': ..., 'state': ...})"

# Globals a checkpoint may name, and what each is read as.
_NUMPY_RECONSTRUCT = np._core.multiarray._reconstruct  # noqa: SLF001 (the function pickles of arrays name)
_NUMPY_SCALAR = np._core.multiarray.scalar  # noqa: SLF001


def _flat_mapping(mapping=(), *rest):
  """Haiku's FlatMapping (2021 checkpoints) read as a plain dict."""
  if rest:
    raise UnsafeCheckpointError(f"a FlatMapping pickled with more than its mapping; {_EXPECTED} expected")
  return dict(mapping)


_ALLOWED = {
  ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
  ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
  ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
  ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
  ("numpy", "ndarray"): np.ndarray,
  ("numpy", "dtype"): np.dtype,
  ("haiku._src.data_structures", "FlatMapping"): _flat_mapping,
}


class CheckpointError(ValueError):
  """The file is not a readable Perceiver IO ImageNet checkpoint."""


class UnsafeCheckpointError(CheckpointError):
  """The pickle names something a checkpoint does not hold (and could run code): refused, unread."""


class _RestrictedUnpickler(pickle.Unpickler):
  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED:
      raise UnsafeCheckpointError(_refusal(module, name))
    return _ALLOWED[(module, name)]


def _refusal(module: str, name: str) -> str:
  return (
    f"refused: the pickle names {module}.{name}, which a checkpoint does not hold (only dicts, numpy arrays "
    "and Haiku's FlatMapping are read); nothing from it was run"
  )


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_STRINGS |= {"STRING", "BINSTRING", "SHORT_BINSTRING"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_SILENT = {"PROTO", "FRAME", "MARK", "STOP"}


def check_globals(data: bytes) -> None:
  """Reads the pickle's opcodes, runs nothing: UnsafeCheckpointError at the first global not allowed,
  CheckpointError if the bytes are not a whole pickle."""
  memo: dict[int, Any] = {}
  recent: list[Any] = []  # What the last opcodes pushed: a string, or None for anything else.
  try:
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
      name = op.name
      if name in ("GLOBAL", "INST"):
        module, _, attr = arg.partition(" ")
        if (module, attr) not in _ALLOWED:
          raise UnsafeCheckpointError(_refusal(module, attr))
      elif name == "STACK_GLOBAL":
        module, attr = recent[-2:] if len(recent) >= 2 else (None, None)
        if not (isinstance(module, str) and isinstance(attr, str)):
          raise UnsafeCheckpointError(
            "refused: the pickle names a global that cannot be read without running"
          )
        if (module, attr) not in _ALLOWED:
          raise UnsafeCheckpointError(_refusal(module, attr))
      if name == "MEMOIZE":
        memo[len(memo)] = recent[-1] if recent else None
      elif name in _PUTS:
        memo[arg] = recent[-1] if recent else None
      elif name in _GETS:
        recent.append(memo.get(arg))
      elif name in _STRINGS:
        recent.append(arg)
      elif name not in _SILENT:
        recent.append(None)
      del recent[:-2]
  except UnsafeCheckpointError:
    raise
  except Exception as e:  # pickletools raises ValueError and others on bytes that are not a pickle.
    raise CheckpointError(f"not a pickle or a damaged one ({e}); {_EXPECTED} expected") from None


def read_checkpoint(path: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """The checkpoint at `path` as plain dicts of numpy arrays: {'params': ..., 'state': ...}.

  Raises:
    FileNotFoundError: no such file.
    UnsafeCheckpointError: the pickle names anything but dicts, numpy arrays and FlatMapping.
    CheckpointError: not a pickle, damaged, or not laid out as a Perceiver IO checkpoint.
  """
  file = epath.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"No checkpoint file {path}; pass the downloaded .pystate file.")
  data = file.read_bytes()
  try:
    check_globals(data)
  except CheckpointError as e:
    raise type(e)(f"{path}: {e}") from None
  try:
    ckpt = _RestrictedUnpickler(io.BytesIO(data)).load()
  except UnsafeCheckpointError as e:
    raise UnsafeCheckpointError(f"{path}: {e}") from None
  except Exception as e:
    raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e}); {_EXPECTED} expected") from None
  if not (isinstance(ckpt, dict) and set(ckpt) == {"params", "state"}):
    got = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f"{path} holds {got}, not {_EXPECTED}")
  for part in ("params", "state"):
    tree = ckpt[part]
    if not isinstance(tree, dict) or not all(isinstance(v, dict) for v in tree.values()):
      raise CheckpointError(f"{path}: '{part}' is not {{module: {{name: array}}}}; {_EXPECTED} expected")
    for module, leaves in tree.items():
      for leaf, value in leaves.items():
        if not (isinstance(value, np.ndarray) and value.dtype.kind in "fiu"):
          where = f"{part}[{module!r}][{leaf!r}]"
          raise CheckpointError(f"{path}: {where} is not a numeric array; {_EXPECTED} expected")
  return ckpt


def identify(params: dict) -> str:
  """Which of the released networks `params` are: 'fourier', 'learned' or 'conv'."""
  prep = {m for m in params if m.startswith("image_preprocessor")}
  if any("conv2_d_downsample" in m for m in prep):
    return "conv"
  if any("trainable_position_encoding" in m for m in prep):
    return "learned"
  if not prep and any(m.startswith("perceiver_encoder/") for m in params):
    return "fourier"
  raise CheckpointError(
    f"its modules ({', '.join(sorted(params)[:4])}, ...) are none of the three Perceiver IO ImageNet "
    f"networks; {_EXPECTED} expected"
  )


# Official sub-module names -> this project's, for a cross-attend and a self-attend.
_CROSS = {
  "layer_norm": "query_norm",
  "layer_norm_1": "input_norm",
  "layer_norm_2": "mlp_norm",
  "attention/linear": "attention/query",
  "attention/linear_1": "attention/key",
  "attention/linear_2": "attention/value",
  "attention/linear_3": "attention/output",
  "mlp/linear": "mlp/hidden",
  "mlp/linear_1": "mlp/output",
}
_SELF = {
  "layer_norm": "norm",
  "layer_norm_1": "mlp_norm",
  "attention/linear": "attention/query",
  "attention/linear_1": "attention/key",
  "attention/linear_2": "attention/value",
  "attention/linear_3": "attention/output",
  "mlp/linear": "mlp/hidden",
  "mlp/linear_1": "mlp/output",
}
_ENCODER = "perceiver_encoder/~/"
_DECODER = "classification_decoder/~/basic_decoder/"
_PREP = "image_preprocessor/"
_BUILD = _PREP + "~_build_network_inputs/"


def module_map(official_modules, model_name: str = "perceiver") -> dict[str, tuple[str, str | None]]:
  """{official module: (this project's module, parameter rename or None)} for every official module.

  Raises CheckpointError for a module the three networks do not have.
  """
  p = model_name
  fixed = {
    _ENCODER + "trainable_position_encoding": (p, "latents"),
    _DECODER + "~/trainable_position_encoding": (p, "decoder_query"),
    _DECODER + "output": (f"{p}/classifier", None),
    _PREP + "~/conv2_d": ("front_end/pixel_projection", None),
    _BUILD + "trainable_position_encoding": ("front_end/~position_features/position", None),
    _BUILD + "position_encoding_projector/linear": ("front_end/position_projection", None),
    _PREP + "~/conv2_d_downsample/~/conv": ("front_end/conv", None),
    _PREP + "~/conv2_d_downsample/~/batchnorm": ("front_end/batchnorm", None),
    _PREP + "~/conv2_d_downsample/~/batchnorm/~/mean_ema": ("front_end/batchnorm/~/mean_ema", None),
    _PREP + "~/conv2_d_downsample/~/batchnorm/~/var_ema": ("front_end/batchnorm/~/var_ema", None),
  }
  out = {}
  for module in official_modules:
    if module in fixed:
      out[module] = fixed[module]
      continue
    for prefix, table, target in (
      (_ENCODER + "cross_attention/", _CROSS, f"{p}/~_cross_attend/cross_attend_0/"),
      (_DECODER + "cross_attention/", _CROSS, f"{p}/~_decode/decoder/"),
    ):
      if module.startswith(prefix) and module[len(prefix) :] in table:
        out[module] = (target + table[module[len(prefix) :]], None)
        break
    else:
      head, _, rest = module.partition("/~/self_attention")
      index, _, sub = rest.partition("/")
      if head == "perceiver_encoder" and (index == "" or index.startswith("_")) and sub in _SELF:
        j = int(index[1:]) if index else 0
        out[module] = (f"{p}/~_latent_transformer/latent_transformer_block_{j}/{_SELF[sub]}", None)
      else:
        raise CheckpointError(f"module {module!r} is in none of the three Perceiver IO ImageNet networks")
  return out


def _fourier_channel_order(feature_channels: int, num_bands: int) -> np.ndarray:
  """Index into the official encoder input's channels for each of this project's: official [features,
  y, x, sin (2K), cos (2K)] -> ours [features, sin (2K), cos (2K), y, x]."""
  f, k = feature_channels, num_bands
  return np.concatenate([np.arange(f), f + 2 + np.arange(4 * k), f + np.arange(2)])


def _shape(params, module, name) -> tuple[int, ...]:
  try:
    return tuple(params[module][name].shape)
  except KeyError:
    raise CheckpointError(f"no {module}/{name}; {_EXPECTED} expected") from None


def official_config(
  params: dict,
  *,
  num_blocks: int = 8,
  num_self_heads: int = 8,
  num_cross_heads: int = 1,
  image_size: int | None = None,
) -> tuple[str, ml_collections.ConfigDict]:
  """(kind, config) of the network whose official parameters are `params`: what make_model needs
  (`model_name`, `model`, `input`, `dataset`, `precision`). Keywords: what the shapes cannot tell."""
  kind = identify(params)
  num_latents, channels = _shape(params, _ENCODER + "trainable_position_encoding", "pos_embs")
  num_classes = _shape(params, _DECODER + "output", "b")[0]
  c_in = _shape(params, _ENCODER + "cross_attention/layer_norm_1", "scale")[0]
  hidden = _shape(params, _ENCODER + "cross_attention/mlp/linear", "w")[1]
  if hidden % channels:
    raise CheckpointError(f"the cross-attend's MLP ({hidden}) is not a multiple of {channels} channels")
  self_attends = sum(m.startswith(_ENCODER + "self_attention") and m.endswith("/layer_norm") for m in params)
  decoder_residual = kind != "learned"  # The colab's decoders: the learned-position network's has none.
  inputs: dict[str, Any]
  if kind == "learned":
    tokens, pos_channels = _shape(params, _BUILD + "trainable_position_encoding", "pos_embs")
    side = int(round(tokens**0.5))
    if side * side != tokens:
      raise CheckpointError(f"a learned position table of {tokens} rows is not a square image's")
    if image_size not in (None, side):
      raise CheckpointError(f"the learned position table fixes the image size at {side}, not {image_size}")
    image_size = side
    pixel_channels = _shape(params, _PREP + "~/conv2_d", "w")[-1]
    inputs = dict(
      front_end="image",
      position_encoding="learned",
      learned_pos_channels=pos_channels,
      pixel_channels=pixel_channels,
      project_positions=True,
    )
  else:
    image_size = image_size or 224
    if kind == "conv":
      kh, kw, _, conv_channels = _shape(params, _PREP + "~/conv2_d_downsample/~/conv", "w")
      if (kh, kw) != (7, 7):
        raise CheckpointError(f"a {kh}x{kw} conv front end; the released network's is 7x7")
      feature_channels, grid = conv_channels, (image_size + 3) // 4  # ceil(n / 4): two stride-2 SAME stages
      inputs = dict(front_end="image_conv", conv_channels=conv_channels)
    else:
      feature_channels, grid = 3, image_size
      inputs = dict(front_end="image", permutation="none")
    num_bands, extra = divmod(c_in - feature_channels - 2, 4)
    if extra or num_bands <= 0:
      raise CheckpointError(f"{c_in} encoder input channels are not {feature_channels} + 2 + 4 x bands")
    inputs.update(position_encoding="fourier", num_bands=num_bands, max_resolution=grid)
  config = ml_collections.ConfigDict(
    dict(
      model_name="perceiver",
      model=dict(
        num_classes=num_classes,
        num_latents=num_latents,
        latent_channels=channels,
        num_cross_attends=1,
        num_latent_transformers=num_blocks,
        num_self_attends_per_block=self_attends,
        num_cross_heads=num_cross_heads,
        num_self_heads=num_self_heads,
        cross_qk_channels=None,
        widening_factor=hidden // channels,
        dropout_rate=0.0,
        head="decoder",
        decoder_num_heads=1,
        decoder_query_residual=decoder_residual,
      ),
      input=inputs,
      dataset=dict(name="imagenet2012", image_size=image_size, num_channels=3, num_classes=num_classes),
      precision="float32",
    )
  )
  return kind, config


def plan(official_shapes: dict, config: ml_collections.ConfigDict, kind: str) -> dict:
  """Where each official array goes: {(part, module, name): (our module, our name, how)}, `how` one of
  None, 'fourier_rows' (rows permuted by `_fourier_channel_order`) and 'conv1x1' ([1, 1, C, P] -> [C, P]).

  `official_shapes` is {'params': {module: {name: shape}}, 'state': ...}. Checked one to one: every official
  array goes to exactly one of this project's, of its shape, and every one of this project's gets one;
  CheckpointError otherwise, naming what is left over.
  """
  target_params, target_state = jax.eval_shape(
    lambda: build.make_model(config).init(
      jax.random.PRNGKey(0), build.dummy_inputs(config, 1), is_training=True, example_keys=None
    )
  )
  input_side = {"input_norm": ("scale", "offset"), "attention/key": ("w",), "attention/value": ("w",)}
  targets = {"params": target_params, "state": target_state}
  out = {}
  for part in ("params", "state"):
    mapping = module_map(official_shapes[part], config.model_name)
    filled = set()
    for module, leaves in official_shapes[part].items():
      ours, rename = mapping[module]
      for name, shape in leaves.items():
        shape, how = tuple(shape), None
        ours_name = rename or name
        suffix = ours.rpartition("cross_attend_0/")[2]
        if kind != "learned" and "cross_attend_0/" in ours and name in input_side.get(suffix, ()):
          how = "fourier_rows"
        if ours == "front_end/pixel_projection" and name == "w":
          how, shape = "conv1x1", shape[-2:]
        want = targets[part].get(ours, {}).get(ours_name)
        if want is None:
          raise CheckpointError(f"{module}/{name} has no place in this project's {kind} network")
        if tuple(want.shape) != shape:
          raise CheckpointError(
            f"{module}/{name} is {shape}; this project's {ours}/{ours_name} is {tuple(want.shape)}"
          )
        if (ours, ours_name) in filled:
          raise CheckpointError(f"two official arrays map to {ours}/{ours_name}")
        filled.add((ours, ours_name))
        out[(part, module, name)] = (ours, ours_name, how)
    missing = [f"{m}/{n}" for m, leaves in targets[part].items() for n in leaves if (m, n) not in filled]
    if missing:
      listed = ", ".join(missing[:5])
      raise CheckpointError(f"the checkpoint has no {part} for {listed}; {_EXPECTED} expected")
  return out


def convert(official: dict, config: ml_collections.ConfigDict, kind: str) -> tuple[dict, dict]:
  """Official {'params', 'state'} -> this project's (params, state) for `config`, one to one (`plan`)."""
  shapes = {
    part: {m: {n: v.shape for n, v in leaves.items()} for m, leaves in official[part].items()}
    for part in official
  }
  order = None
  if kind != "learned":
    conv = official["params"].get(_PREP + "~/conv2_d_downsample/~/conv", {})
    features = conv["w"].shape[-1] if kind == "conv" else 3
    order = _fourier_channel_order(features, config.input.num_bands)
  out = {"params": {}, "state": {}}
  for (part, module, name), (ours, ours_name, how) in plan(shapes, config, kind).items():
    value = np.asarray(official[part][module][name])
    if how == "fourier_rows":
      value = value[order]
    elif how == "conv1x1":
      value = value.reshape(value.shape[-2:])
    # This project's parameters are float32 (BatchNorm's counter int32), as the released ones are.
    out[part].setdefault(ours, {})[ours_name] = value.astype(
      np.int32 if value.dtype.kind in "iu" else np.float32
    )
  return out["params"], out["state"]


def load_official(
  path: str,
  *,
  num_blocks: int = 8,
  num_self_heads: int = 8,
  num_cross_heads: int = 1,
  image_size: int | None = None,
) -> tuple[ml_collections.ConfigDict, dict, dict]:
  """(config, params, state) of a released Perceiver IO ImageNet checkpoint; see the module docstring.

  `build.make_model(config).apply(params, state, None, images, is_training=False)` gives the official
  network's logits for images normalised as DeepMind's colab does. The keywords are what the shapes cannot
  tell; their defaults are the released networks'. `config.pretrained_kind` says which network it is.
  """
  ckpt = read_checkpoint(path)
  try:
    kind, config = official_config(
      ckpt["params"],
      num_blocks=num_blocks,
      num_self_heads=num_self_heads,
      num_cross_heads=num_cross_heads,
      image_size=image_size,
    )
    params, state = convert(ckpt, config, kind)
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
  logging.info("%s: Perceiver IO ImageNet, %s.", path, KINDS[kind])
  config.pretrained_kind = kind
  return config, params, state
