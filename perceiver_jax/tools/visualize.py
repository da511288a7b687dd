"""Pictures of a trained Perceiver: cross-attention maps on the image grid, and its position features.

Axes: B examples, H heads, N latents, M input tokens (pixels), P position channels; the image grid is
[h, w] with M = h * w (the front end's grid: the image, or its `resize_to` version).

`visualize_run(load(workdir), out_dir)` takes a finished run (`train.load_run`), feeds the first
few evaluation images exactly as `train.eval_step` does (same per-example keys, hence the same `random`
permutation), and writes PNGs plus an `index.md` that ties them together:
- the input images;
- for the first and the last cross-attend, the maps of a few latents reshaped to the image grid. The
  model sees tokens in permuted order when the run permutes pixels; the maps are put back in pixel
  order, so they read as pictures whatever the permutation;
- the Fourier position features of a few bands (or the first channels of a learned encoding).
The latents shown are those whose attention is most concentrated (lowest entropy, averaged over the
examples and heads): a map that spreads evenly over all pixels says little.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perceiver_jax import data
from perceiver_jax.front_ends.images import ImageFrontEnd
from perceiver_jax.training import build, run_files, train

NUM_LATENTS = 8
# Panels per cross-attend in the one-figure overview (the per-example figures show NUM_LATENTS).
_OVERVIEW_LATENTS = 4
# The overview figure shows at most this many examples: its layout cost grows faster than its panels.
OVERVIEW_EXAMPLES = 16
# Attention maps are computed this many examples at a time, so memory does not grow with --examples.
_CHUNK = 64
# Beyond this many examples a run is refused: each costs ~2.5 s of PNGs on a CPU core (80: 205 s, 0.5 GB).
MAX_EXAMPLES = 200


class Examples(NamedTuple):
  images: np.ndarray  # [B, h, w, C]
  labels: np.ndarray  # [B]
  indices: np.ndarray  # [B] global eval indices, what eval_step derives the examples' keys from


class Attention(NamedTuple):
  logits: np.ndarray  # [B, num_classes]
  maps: list[np.ndarray]  # per cross-attend, [B, H, N, h, w] in pixel (raster) order


def eval_examples(config: ml_collections.ConfigDict, count: int, distinct_labels: bool = True) -> Examples:
  """`count` real examples of the eval split, in eval order, with their global indices (one process).

  With `distinct_labels`, the first example of each class until `count` classes are found (then the
  first of the others), so that a few pictures show different digits; otherwise the first `count`.
  """
  if count <= 0:
    raise ValueError(f"count={count} must be positive.")
  if jax.process_count() > 1:
    # Each process would see only its share of a batch, and the global indices below would be wrong.
    raise ValueError("Visualization runs in a single process.")
  classes = min(count, config.dataset.num_classes) if distinct_labels else 0
  chosen, others, seen = [], [], set()
  for index, batch in enumerate(data.eval_batches(config)):
    for p in np.flatnonzero(batch["eval_mask"]):
      # As eval_step: the example at position p of global batch i has global index i * batch size + p.
      example = (batch["inputs"][p], batch["label"][p], index * len(batch["eval_mask"]) + p)
      if len(seen) < classes and int(example[1]) not in seen:
        seen.add(int(example[1]))
        chosen.append(example)
      elif len(others) < count:
        others.append(example)
    if len(seen) >= classes and len(chosen) + len(others) >= count:
      break
  picked = sorted(chosen + others[: count - len(chosen)], key=lambda e: e[2])
  images, labels, indices = zip(*picked, strict=True)
  return Examples(np.stack(images), np.asarray(labels), np.asarray(indices))


def _front_end(config: ml_collections.ConfigDict, fn, params=None):
  """fn(front end) inside a Haiku transform, with the run's parameters (for a learned encoding)."""
  return hk.transform(lambda: fn(build.front_end(config))).apply(params or {}, None)


def grid_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  return tuple(_front_end(config, lambda fe: fe.grid_shape))


def token_permutations(config: ml_collections.ConfigDict, example_keys) -> jax.Array | None:
  """int [B, M] with tokens[b, j] = pixel perm[b, j], as the front end orders them; None if unpermuted."""
  return _front_end(config, lambda fe: fe.permutations(example_keys.shape[0], example_keys))


def unpermute(weights: jax.Array, perm: jax.Array | None) -> jax.Array:
  """Weights over tokens [B, ..., M] -> over pixels in raster order: out[b, .., perm[b, j]] = w[b, .., j]."""
  if perm is None:
    return weights
  inverse = jnp.argsort(perm, axis=-1)  # [B, M]: the token that holds pixel p
  inverse = inverse.reshape(inverse.shape[0], *([1] * (weights.ndim - 2)), inverse.shape[-1])
  return jnp.take_along_axis(weights, inverse, axis=-1)


def attention_maps(config: ml_collections.ConfigDict, params, state, images, example_keys) -> Attention:
  """Logits and per-cross-attend attention maps on the pixel grid for `images` [B, h, w, C].

  `example_keys` [B] are the keys the model is fed (they draw a `random` permutation).
  """
  if config.model_name != "perceiver":
    raise ValueError(f"Attention maps need a Perceiver run; this run's model_name={config.model_name!r}.")
  if build.front_end_class(config) is not ImageFrontEnd:
    raise ValueError(
      f"Attention maps are drawn on an image grid; this run's input.front_end={config.input.front_end!r}."
    )
  model = build.make_model(config)
  shape = grid_shape(config)

  @jax.jit  # One compile for the model, the permutations and their inverses.
  def maps(params, state, images, keys):
    (logits, weights), _ = model.apply(
      params, state, None, images, is_training=False, example_keys=keys, return_attention=True
    )
    perm = token_permutations(config, keys)
    return logits, [unpermute(w, perm).reshape(*w.shape[:-1], *shape) for w in weights]

  parts = [
    jax.device_get(maps(params, state, images[i : i + _CHUNK], example_keys[i : i + _CHUNK]))
    for i in range(0, len(images), _CHUNK)
  ]
  logits = np.concatenate([np.asarray(p[0]) for p in parts])
  weights = [np.concatenate([np.asarray(p[1][k]) for p in parts]) for k in range(len(parts[0][1]))]
  return Attention(logits, weights)


def averaged_attention(
  config: ml_collections.ConfigDict, params, state, inputs, example_keys, masks=None
) -> tuple[np.ndarray, list[np.ndarray]]:
  """(logits [B, K], per cross-attend weights [B, N, M] averaged over heads) of the model's own inputs.

  The points, sound and video pictures' one forward pass; `masks` [B, M] marks the real tokens.
  """
  if config.model_name != "perceiver":
    raise ValueError(f"Attention needs a Perceiver run; this run's model_name={config.model_name!r}.")
  model = build.make_model(config)

  @jax.jit
  def run(params, state, inputs, masks, keys):
    (logits, weights), _ = model.apply(
      params,
      state,
      None,
      inputs,
      is_training=False,
      input_mask=masks,
      example_keys=keys,
      return_attention=True,
    )
    return logits, [w.mean(axis=1) for w in weights]

  logits, weights = jax.device_get(run(params, state, inputs, masks, example_keys))
  return np.asarray(logits), [np.asarray(w) for w in weights]


def focused_latents(maps: np.ndarray, count: int) -> np.ndarray:
  """Indices of the `count` latents with the most concentrated maps [B, H, N, h, w], most focused first.

  Concentration is low entropy of the weights over pixels, averaged over examples and heads.
  """
  p = maps.reshape(*maps.shape[:3], -1).astype(np.float64)  # [B, H, N, M]
  entropy = -np.sum(p * np.log(np.maximum(p, 1e-30)), axis=-1).mean(axis=(0, 1))  # [N]
  return np.argsort(entropy, kind="stable")[: min(count, len(entropy))]


def position_features(config: ml_collections.ConfigDict, params=None) -> np.ndarray:
  """The front end's position features on the image grid: [h, w, P]."""
  features = jax.jit(lambda p: _front_end(config, lambda fe: fe.position_features(), p))(params or {})
  return np.asarray(features).reshape(*grid_shape(config), -1)


def fourier_panels(
  features: np.ndarray, num_bands: int, bands: Sequence[int]
) -> list[list[tuple[str, np.ndarray]]]:
  """One row of (title, [h, w] picture) per band in `bands`, from Fourier features [h, w, 2(2K + 1)].

  Channel layout as `position_encoding.fourier_features`: sines (axis-major, then band), then cosines,
  then the raw positions; axis 0 runs down the rows (y), axis 1 across the columns (x).
  """
  k = num_bands
  panels = []
  for band in bands:
    sin_y, sin_x = features[..., band], features[..., k + band]
    cos_y, cos_x = features[..., 2 * k + band], features[..., 3 * k + band]
    # A key projection adds channels together: the sum of the two axes' waves is the tartan it sees.
    panels.append(
      [
        (f"band {band + 1}/{k}: sin y", sin_y),
        ("cos y", cos_y),
        ("sin x", sin_x),
        ("cos x", cos_x),
        ("sin y + sin x", sin_y + sin_x),
      ]
    )
  return panels


# ----- drawing


def _figure(rows: int, cols: int, panel: float = 1.6) -> tuple[Figure, np.ndarray]:
  # Constrained layout keeps titles and the suptitle clear of the panels.
  fig = Figure(figsize=(cols * panel, rows * panel + 0.4), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)  # Agg whatever matplotlib's default backend: no display is ever needed.
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  return fig, axes


def _show_image(ax, image: np.ndarray) -> None:
  image = np.asarray(image, np.float32)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", interpolation="nearest")
    return
  # Inputs may be normalised; rescale each image to [0, 1] for display only.
  lo, hi = image.min(), image.max()
  ax.imshow((image - lo) / max(hi - lo, 1e-8), interpolation="nearest")


def _show_map(ax, heat: np.ndarray, title: str) -> None:
  # Each map on its own scale (0 to its maximum); the title gives that maximum.
  ax.imshow(heat, cmap="viridis", vmin=0.0, vmax=max(float(heat.max()), 1e-12), interpolation="nearest")
  ax.set_title(title, fontsize=8)


def _save(fig: Figure, path: str) -> str:
  """Writes the PNG through epath, so that `path` may be on gs:// as well as on a local disk."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  epath.Path(path).write_bytes(buffer.getvalue())
  return path


def draw_input(image: np.ndarray, title: str, path: str) -> str:
  fig, axes = _figure(1, 1, panel=2.0)
  _show_image(axes[0, 0], image)
  axes[0, 0].set_title(title, fontsize=9)
  return _save(fig, path)


def draw_attention(image: np.ndarray, maps: np.ndarray, latents: np.ndarray, title: str, path: str) -> str:
  """The image, then the head-averaged maps [H, N, h, w] of `latents`, on a near-square grid."""
  heads_mean = maps.mean(axis=0)  # [N, h, w]; still sums to one over the pixels
  cols = int(np.ceil(np.sqrt(len(latents) + 1)))
  rows = int(np.ceil((len(latents) + 1) / cols))
  fig, axes = _figure(rows, cols)
  _show_image(axes.flat[0], image)
  axes.flat[0].set_title("input", fontsize=8)
  for ax, n in zip(axes.flat[1:], latents, strict=False):
    _show_map(ax, heads_mean[n], f"latent {n}, max {heads_mean[n].max():.2f}")
  for ax in axes.flat[len(latents) + 1 :]:
    ax.axis("off")
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def draw_position_features(config: ml_collections.ConfigDict, features: np.ndarray, path: str) -> str:
  """Fourier features of the first, a middle and the last band; or a learned encoding's first channels."""
  if config.input.position_encoding == "fourier":
    k = config.input.num_bands
    bands = sorted({0, k // 2, k - 1})  # The lowest, a middle and the highest frequency.
    rows = fourier_panels(features, k, bands)
    title = f"Fourier position features ({k} bands per axis, max resolution {config.input.max_resolution})"
  else:
    channels = min(10, features.shape[-1])
    panels = [(f"channel {c}", features[..., c]) for c in range(channels)]
    rows = [panels[i : i + 5] for i in range(0, channels, 5)]
    title = f"Learned position encoding, first {channels} of {features.shape[-1]} channels"
  fig, axes = _figure(len(rows), max(len(r) for r in rows))
  for row_axes, row in zip(axes, rows, strict=False):
    for ax, (name, picture) in zip(row_axes, row, strict=False):
      # Symmetric about zero, so that white means 0 in every panel.
      limit = max(float(np.abs(picture).max()), 1e-8)
      ax.imshow(picture, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
      ax.set_title(name, fontsize=8)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def draw_overview(examples: Examples, attention: Attention, latents: list[np.ndarray], path: str) -> str:
  """One row per example (the first OVERVIEW_EXAMPLES): the image, then a few latents of the first and of
  the last cross-attend."""
  rows = min(len(examples.labels), OVERVIEW_EXAMPLES)
  first, last = 0, len(attention.maps) - 1
  attends = [first] if first == last else [first, last]
  shown = [latents[i][:_OVERVIEW_LATENTS] for i in attends]
  cols = 1 + sum(len(s) for s in shown)
  fig, axes = _figure(rows, cols, panel=1.3)
  predictions = attention.logits.argmax(-1)
  for b, row in enumerate(axes):
    _show_image(row[0], examples.images[b])
    row[0].set_title(f"label {examples.labels[b]}, pred {predictions[b]}", fontsize=7)
    col = 1
    for i, chosen in zip(attends, shown, strict=True):
      heads_mean = attention.maps[i][b].mean(axis=0)
      for n in chosen:
        _show_map(row[col], heads_mean[n], f"x-att {i + 1}, latent {n}")
        row[col].title.set_fontsize(7)
        col += 1
  return _save(fig, path)


# ----- the run


def load(workdir: str) -> train.Run:
  """The finished run in `workdir`; FileNotFoundError or ValueError (not a Perceiver) with a clear message."""
  run = train.load_run(workdir)
  if run.config.model_name != "perceiver":
    raise ValueError(
      f"{workdir} holds a {run.config.model_name!r} run; attention maps need model_name='perceiver'."
    )
  return run


def visualize_run(
  run: train.Run,
  out_dir: str,
  num_examples: int = 4,
  num_latents: int = NUM_LATENTS,
  workdir: str | None = None,
) -> str:
  """Writes the PNGs and `index.md` of `run` into `out_dir`; returns the index's path."""
  if num_latents <= 0:
    raise ValueError(f"num_latents={num_latents} must be positive.")
  if not 0 < num_examples <= MAX_EXAMPLES:
    raise ValueError(f"--examples={num_examples} must be in 1..{MAX_EXAMPLES} (each example is a few PNGs).")
  config, state = run.config, run.state
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  examples = eval_examples(config, num_examples)
  keys = train.eval_example_keys(state.rng, examples.indices)
  attention = attention_maps(config, state.params, state.state, examples.images, keys)
  k = len(attention.maps)
  attends = [0] if k == 1 else [0, k - 1]
  latents = [focused_latents(m, num_latents) for m in attention.maps]
  predictions = attention.logits.argmax(-1)

  def rel(path):  # Every file is written directly into out_dir.
    return epath.Path(path).name

  lines = [f"# Inside the Perceiver of `{workdir or 'a run'}` at step {run.step}", ""]
  m, i = config.model, config.input
  results = epath.Path(workdir) / "results.json" if workdir else None
  accuracy = ""
  if results and results.exists():
    accuracy = f" Eval top-1 {run_files.read_json(results)['eval']['top1']:.1%}."
  lines += [
    f"{m.num_latents} latents x {m.latent_channels} channels, {m.num_cross_attends} cross-attend(s) with "
    f"{m.num_cross_heads} head(s); position encoding `{i.position_encoding}`, permutation `{i.permutation}`."
    + accuracy,
    "",
    "Attention maps: the weights with which one latent reads the pixels (they sum to one over the image), "
    "averaged over heads and drawn on the image grid. "
    + (
      "The model saw the pixels permuted; the maps are put back in pixel order. "
      if i.permutation != "none"
      else ""
    )
    + f"Shown per cross-attend: the {len(latents[0])} latents whose maps are most concentrated (lowest "
    f"entropy, averaged over these {len(examples.labels)} examples), most focused first; each map is "
    "coloured from 0 to its own maximum, given in its title.",
    "",
  ]
  overview = draw_overview(examples, attention, latents, os.fspath(out / "overview.png"))
  lines += ["## Overview", "", f"![overview]({rel(overview)})", ""]
  for b in range(len(examples.labels)):
    label = f"example {b}: label {examples.labels[b]}, predicted {predictions[b]}"
    lines += [f"## {label.capitalize()}", ""]
    path = draw_input(examples.images[b], label, os.fspath(out / f"input_{b}.png"))
    lines += [f"![input {b}]({rel(path)})", ""]
    for a in attends:
      name = "first" if a == 0 else "last"
      path = draw_attention(
        examples.images[b],
        attention.maps[a][b],
        latents[a],
        f"{label}; cross-attend {a + 1} of {k} ({name})",
        os.fspath(out / f"attention_{b}_cross_attend_{a + 1}.png"),
      )
      lines += [f"Cross-attend {a + 1} of {k} ({name}):", "", f"![attention {b} {a + 1}]({rel(path)})", ""]
  if i.position_encoding != "none":
    features = position_features(config, state.params)
    path = draw_position_features(config, features, os.fspath(out / "position_features.png"))
    lines += [
      "## Position features",
      "",
      "What each pixel carries besides its value: per band, the sine and cosine along each axis, and the "
      "sum of the two axes' sines, the kind of tartan a linear key projection sees."
      if i.position_encoding == "fourier"
      else "The first channels of the learned position encoding, on the image grid.",
      "",
      f"![position features]({rel(path)})",
      "",
    ]
  index = out / "index.md"
  index.write_text("\n".join(lines))
  return os.fspath(index)
