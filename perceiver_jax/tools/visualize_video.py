"""Pictures of a video or audio+video run: where a Perceiver's latents look in space and time, and how
much of their attention each modality gets.

Axes: B examples, N latents, M input tokens; the video's patch grid is (T', H', W') (front_ends/video.py).
`visualize_run(run, out_dir)` takes a finished Perceiver run (`train.load_run`) fed video (`input.front_end`
`video`, or `multimodal` with a `video` modality), feeds the first few evaluation examples exactly as
evaluation does (the same per-example keys), and writes PNGs and an `index.md`:
- `video_<b>.png` per example: a few frames of the clip, and under them, for a few latents of the first and
  the last cross-attend (those whose attention over the video tokens is most concentrated), at the time
  steps each attends to most, the frame under its weights on the patch grid (averaged over heads, each
  latent on its own scale), and the share of the latent's attention on each time step;
- for several modalities, `modalities.png`: per cross-attend, each latent's share of attention on each
  modality (averaged over the examples), sorted, beside the modality's share of the tokens; the mean
  shares are written in index.md too.
The tokens of a modality are found where the multimodal front end puts them: in sorted name order.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import haiku as hk
import jax
import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perceiver_jax import data
from perceiver_jax.tools import visualize
from perceiver_jax.training import build, run_files, train

NUM_FRAMES = 4  # Frames drawn per clip.
NUM_LATENTS = 3  # Latents drawn per cross-attend.


def is_video_config(config: Mapping) -> bool:
  settings = config.get("input", {})
  if settings.get("front_end") == "multimodal":
    return "video" in settings.get("modalities", {})
  return settings.get("front_end") == "video"


def is_video_workdir(workdir: str) -> bool:
  """Whether the run in `workdir` (its config.json, if any) is fed video."""
  path = epath.Path(workdir) / run_files.CONFIG
  return path.exists() and is_video_config(run_files.read_json(path))


def token_layout(config) -> tuple[dict[str, tuple[int, int]], tuple[int, int, int]]:
  """({modality: (first token, token count)}, the video's patch grid (T', H', W')), traced, nothing run."""
  spec = build.input_spec(config)
  spec = spec if isinstance(spec, dict) else {"video": spec}
  grid = {}

  def counts(x):
    front_end = build.front_end(config)
    if not getattr(front_end, "composes_modalities", False):
      grid["video"] = front_end.grid
      return {"video": front_end(x["video"])[0]}
    out = {}
    for name in front_end.names:  # The multimodal front end's order.
      module = front_end.front_ends[name](name)
      if name == "video":
        grid["video"] = module.grid
      keys = jax.random.split(jax.random.PRNGKey(0), 1)
      out[name] = module(x[name], example_keys=keys)[0]
    return out

  abstract = {n: jax.ShapeDtypeStruct((1, *s.shape), s.dtype) for n, s in spec.items()}
  shapes = jax.eval_shape(lambda x: hk.transform(counts).apply({}, None, x), abstract)
  layout, start = {}, 0
  for name in sorted(shapes):
    layout[name] = (start, shapes[name].shape[1])
    start += shapes[name].shape[1]
  return layout, grid["video"]


def eval_examples(config, count: int) -> tuple[dict, np.ndarray]:
  """The first `count` real eval examples stacked ({inputs, input_mask?, label}); their global indices."""
  if jax.process_count() > 1:
    raise ValueError("Visualization runs in a single process.")
  picked, indices = [], []
  for index, batch in enumerate(data.eval_batches(config)):
    for p in np.flatnonzero(batch["eval_mask"])[: count - len(picked)]:
      picked.append(jax.tree.map(lambda x, p=p: x[p], {k: v for k, v in batch.items() if k != "eval_mask"}))
      indices.append(index * len(batch["eval_mask"]) + p)  # As eval_step numbers them.
    if len(picked) >= count:
      break
  return jax.tree.map(lambda *xs: np.stack(xs), *picked), np.asarray(indices)


def attention(config, params, state, inputs, masks, keys) -> tuple[np.ndarray, list[np.ndarray]]:
  """(logits [B, K], per cross-attend weights [B, N, M] averaged over heads)."""
  return visualize.averaged_attention(config, params, state, inputs, keys, masks)


def modality_shares(weights: np.ndarray, layout: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
  """{modality: [N] share of each latent's attention on its tokens, averaged over examples} of [B, N, M]."""
  return {n: weights[..., s : s + c].sum(-1).mean(0) for n, (s, c) in layout.items()}


def focused_latents(weights: np.ndarray, count: int) -> np.ndarray:
  """The `count` latents of [B, N, M'] with the lowest entropy of their renormalised weights, most focused
  first."""
  p = weights.astype(np.float64)
  p = p / np.maximum(p.sum(-1, keepdims=True), 1e-30)
  entropy = -np.sum(p * np.log(np.maximum(p, 1e-30)), axis=-1).mean(axis=0)  # [N]
  return np.argsort(entropy, kind="stable")[: min(count, len(entropy))]


# ----- drawing


def _figure(rows: int, cols: int, panel: float = 1.6) -> tuple[Figure, np.ndarray]:
  fig = Figure(figsize=(cols * panel, rows * panel + 0.4), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  return fig, np.asarray(fig.subplots(rows, cols, squeeze=False))


def _save(fig: Figure, path: str) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  epath.Path(path).write_bytes(buffer.getvalue())
  return path


def draw_clip(frames, video_weights, grid, latents, title: str, path: str) -> str:
  """frames [T, H, W, C]; video_weights per cross-attend [N, T' H' W'] (the video tokens); `latents`
  per cross-attend. Row 0: frames evenly spaced over the clip; then one row per (cross-attend, latent): at
  the NUM_FRAMES time steps it attends to most, the first frame of that step under the latent's weights on
  the patch grid (each latent on its own scale), and last its attention per time step."""
  t_, h_, w_ = grid
  per_frame = len(frames) // t_
  clip = np.asarray(frames, np.float32)
  lo, span = float(clip.min()), max(float(np.ptp(clip)), 1e-8)  # One scale for the clip, for display.
  clip = (clip - lo) / span
  ph, pw = clip.shape[1] // h_, clip.shape[2] // w_
  shown = np.unique(np.linspace(0, len(frames) - 1, NUM_FRAMES).round().astype(int))
  rows = [(a, n) for a, chosen in enumerate(latents) for n in chosen]
  fig, axes = _figure(1 + len(rows), NUM_FRAMES + 1)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  for ax, f in zip(axes[0], shown, strict=False):
    ax.imshow(clip[f], interpolation="nearest")
    ax.set_title(f"frame {f}", fontsize=8)
  for ax in axes[0, len(shown) :]:
    ax.axis("off")
  for row, (a, n) in zip(axes[1:], rows, strict=True):
    grid_weights = video_weights[a][n].reshape(t_, h_, w_)
    over_time = grid_weights.sum(axis=(1, 2))
    top = max(float(grid_weights.max()), 1e-12)
    for ax, step in zip(row, sorted(np.argsort(-over_time, kind="stable")[:NUM_FRAMES]), strict=False):
      heat = np.kron(grid_weights[step], np.ones((ph, pw)))  # The patch grid at pixel size.
      ax.imshow(clip[step * per_frame], interpolation="nearest")
      ax.imshow(heat, cmap="magma", vmin=0.0, vmax=top, alpha=0.6, interpolation="nearest")
      ax.set_title(f"x-att {a + 1}, latent {n}, frame {step * per_frame}", fontsize=6)
    row[-1].bar(np.arange(t_), over_time, color="tab:blue")
    row[-1].set_title("attention per time step", fontsize=7)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def draw_modalities(shares: list[dict[str, np.ndarray]], token_share: Mapping[str, float], path: str) -> str:
  """Per cross-attend: each latent's share of attention per modality, latents sorted by the video's."""
  fig, axes = _figure(1, len(shares), panel=3.2)
  for a, (ax, share) in enumerate(zip(axes[0], shares, strict=True)):
    order = np.argsort(-share["video"], kind="stable")
    bottom = np.zeros(len(order))
    for name in sorted(share):
      ax.bar(np.arange(len(order)), share[name][order], bottom=bottom, width=1.0, label=name)
      bottom += share[name][order]
    ax.axhline(token_share["video"], color="k", linestyle="--", linewidth=1, label="video's share of tokens")
    ax.set_title(f"cross-attend {a + 1}", fontsize=9)
    ax.set_xlabel("latents, by their video share", fontsize=8)
    ax.set_ylim(0, 1)
  axes[0, 0].set_ylabel("share of attention", fontsize=8)
  axes[0, 0].legend(fontsize=7)
  return _save(fig, path)


# ----- the run


def visualize_run(run: train.Run, out_dir: str, num_examples: int = 2, workdir: str | None = None) -> str:
  """Writes the PNGs and `index.md` of `run` into `out_dir`; returns the index's path."""
  config, state = run.config, run.state
  if not is_video_config(config.to_dict()):
    raise ValueError(f"input.front_end={config.input.front_end!r} feeds no video; nothing to draw here.")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  layout, grid = token_layout(config)
  examples, indices = eval_examples(config, num_examples)
  keys = train.eval_example_keys(state.rng, indices)
  inputs, masks = examples["inputs"], examples.get("input_mask")
  logits, weights = attention(config, state.params, state.state, inputs, masks, keys)
  frames = inputs["video"] if isinstance(inputs, dict) else inputs
  start, count = layout["video"]
  video_weights = [w[..., start : start + count] for w in weights]  # [B, N, T' H' W'] each
  attends = [0] if len(weights) == 1 else [0, len(weights) - 1]
  latents = [focused_latents(video_weights[a], NUM_LATENTS) for a in attends]
  lines = [f"# Where the Perceiver of `{workdir or 'a run'}` looks, at step {run.step}", ""]
  results = epath.Path(workdir) / "results.json" if workdir else None
  if results and results.exists():
    metrics = run_files.read_json(results)["eval"]
    lines += [f"Eval {', '.join(f'{k} {metrics[k]:.3f}' for k in ('mAP', 'top1') if k in metrics)}.", ""]
  lines += [
    f"Tokens: {', '.join(f'{n} {c} (from {s})' for n, (s, c) in layout.items())}; the video's patch grid "
    f"{grid[0]} x {grid[1]} x {grid[2]} (time x rows x columns). Per clip: {NUM_FRAMES} frames, then for the "
    f"{NUM_LATENTS} latents of the first and last cross-attend whose attention over the video is most "
    "concentrated: at the time steps it attends to most, the frame under that attention on the patch grid "
    "(each latent on its own scale), and its sum per time step.",
    "",
  ]
  for b in range(len(indices)):
    label = np.asarray(examples["label"][b])
    positives = np.flatnonzero(label > 0).tolist() if label.ndim else [int(label)]
    title = (
      f"example {b} (eval {indices[b]}): top scores {np.argsort(-logits[b])[:3].tolist()}, labels {positives}"
    )
    path = draw_clip(
      frames[b], [w[b] for w in video_weights], grid, latents, title, os.fspath(out / f"video_{b}.png")
    )
    lines += [f"## {title}", "", f"![video {b}]({epath.Path(path).name})", ""]
  if len(layout) > 1:
    shares = [modality_shares(w, layout) for w in weights]
    total = sum(c for _, c in layout.values())
    token_share = {n: c / total for n, (_, c) in layout.items()}
    path = draw_modalities(shares, token_share, os.fspath(out / "modalities.png"))
    lines += ["## Attention per modality", ""]
    for a, share in enumerate(shares):
      parts = [f"{n} {share[n].mean():.1%} (of tokens {token_share[n]:.1%})" for n in sorted(share)]
      lines.append(f"- cross-attend {a + 1}: mean share of a latent's attention: {', '.join(parts)}")
    lines += ["", f"![modalities]({epath.Path(path).name})", ""]
  index = out / "index.md"
  index.write_text("\n".join(lines))
  return os.fspath(index)
