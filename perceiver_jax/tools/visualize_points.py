"""Pictures of a point-cloud run: a few evaluation clouds, and where a Perceiver's latents read them.

Axes: B examples, H heads, N latents, P points. `visualize_run(run, out_dir)` takes a finished run
(`train.load_run`) whose `input.front_end` is `points`, feeds the first few evaluation clouds (one per
class while classes last) exactly as evaluation does, and writes PNGs and an `index.md`:
- `clouds.png`: the clouds as the model gets them (zero-centred, in the unit cube), three views each;
- for a Perceiver run, `attention_<b>.png` per example: the cloud coloured by the weights with which each
  of a few latents reads the points in the first and the last cross-attend (averaged over heads), the
  latents with the most concentrated weights (lowest entropy over the points) first.
"""

from __future__ import annotations

import io
import os

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perceiver_jax.tools import visualize
from perceiver_jax.training import run_files, train

_VIEWS = ((20, -60), (20, 30), (80, -90))  # (elevation, azimuth) of the three views of a cloud.


def is_points_run(config) -> bool:
  return config.input.front_end == "points"


def is_points_workdir(workdir: str) -> bool:
  """Whether the run in `workdir` (its config.json, if any) is a point-cloud run."""
  path = epath.Path(workdir) / run_files.CONFIG
  return path.exists() and run_files.read_json(path).get("input", {}).get("front_end") == "points"


def attention_weights(config, params, state, clouds, example_keys) -> tuple[np.ndarray, list[np.ndarray]]:
  """(logits [B, K], per cross-attend weights [B, N, P] averaged over heads) of clouds [B, P, 3 + E]."""
  return visualize.averaged_attention(config, params, state, clouds, example_keys)


def focused_latents(weights: np.ndarray, count: int) -> np.ndarray:
  """The `count` latents of weights [B, N, P] with the lowest entropy over the points, most focused first."""
  p = weights.astype(np.float64)
  entropy = -np.sum(p * np.log(np.maximum(p, 1e-30)), axis=-1).mean(axis=0)  # [N]
  return np.argsort(entropy, kind="stable")[: min(count, len(entropy))]


def _scatter(fig, where, xyz, colour, title, view, cmap="viridis", size=4.0):
  ax = fig.add_subplot(*where, projection="3d")
  ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=colour, cmap=cmap, s=size, depthshade=False)
  ax.view_init(*view)
  ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
  ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
  ax.set_title(title, fontsize=7)


def _save(fig: Figure, path: str) -> str:
  FigureCanvasAgg(fig)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=90)
  epath.Path(path).write_bytes(buffer.getvalue())
  return path


def draw_clouds(clouds, labels, titles, path: str) -> str:
  """clouds [B, P, 3 + E] in three views each, one row per cloud, coloured by height."""
  fig = Figure(figsize=(2.2 * len(_VIEWS), 2.2 * len(clouds)))
  for b, cloud in enumerate(clouds):
    for v, view in enumerate(_VIEWS):
      title = f"{titles[b]} (view {v + 1})" if v == 0 else f"view {v + 1}"
      _scatter(fig, (len(clouds), len(_VIEWS), b * len(_VIEWS) + v + 1), cloud, cloud[:, 2], title, view)
  fig.tight_layout()
  return _save(fig, path)


def draw_attention(cloud, weights: list[np.ndarray], latents: list[np.ndarray], title: str, path: str) -> str:
  """One cloud [P, 3 + E] coloured by a few latents' weights [N, P], one row per cross-attend drawn."""
  cols = max(len(chosen) for chosen in latents)
  fig = Figure(figsize=(2.2 * cols, 2.4 * len(weights)))
  for row, (w, chosen) in enumerate(zip(weights, latents, strict=True)):
    for col, n in enumerate(chosen):
      _scatter(
        fig,
        (len(weights), cols, row * cols + col + 1),
        cloud,
        w[n],
        f"{'first' if row == 0 else 'last'} cross-attend, latent {n}\nmax {w[n].max():.3f}",
        _VIEWS[0],
        cmap="plasma",
        size=2.0 + 40.0 * w[n] / max(float(w[n].max()), 1e-12),  # The points read most, drawn largest.
      )
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def visualize_run(
  run: train.Run, out_dir: str, num_examples: int = 4, num_latents: int = 4, workdir=None
) -> str:
  """Writes the clouds, and for a Perceiver the attention pictures, plus `index.md`; returns its path."""
  config, state = run.config, run.state
  if not is_points_run(config):
    raise ValueError(
      f"{workdir or 'the run'} is not a point-cloud run (input.front_end={config.input.front_end!r})."
    )
  if not 0 < num_examples <= 32 or num_latents <= 0:
    raise ValueError(f"--examples={num_examples} must be in 1..32 and --latents={num_latents} positive.")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  examples = visualize.eval_examples(config, num_examples)
  clouds, labels = examples.images, examples.labels
  lines = [f"# A point-cloud run: `{workdir or 'a run'}` at step {run.step}", ""]
  titles = [f"example {b}: label {labels[b]}" for b in range(len(labels))]
  if config.model_name != "perceiver":
    path = draw_clouds(clouds, labels, titles, os.fspath(out / "clouds.png"))
    lines += [
      f"{config.model_name}: no cross-attention to draw.",
      "",
      f"![clouds]({epath.Path(path).name})",
      "",
    ]
  else:
    keys = train.eval_example_keys(state.rng, examples.indices)
    logits, weights = attention_weights(config, state.params, state.state, clouds, keys)
    predicted = logits.argmax(-1)
    titles = [f"{t}, predicted {predicted[b]}" for b, t in enumerate(titles)]
    path = draw_clouds(clouds, labels, titles, os.fspath(out / "clouds.png"))
    lines += [
      "The clouds as the model gets them (zero-centred, normalised to the unit cube), three views each:",
      "",
      f"![clouds]({epath.Path(path).name})",
      "",
      "Cross-attention: each point coloured by the weight with which one latent reads it (averaged over "
      f"heads; they sum to one over the {clouds.shape[1]} points), for the {num_latents} latents per "
      "cross-attend with the most concentrated weights over these examples, most focused first.",
      "",
    ]
    drawn = [0] if len(weights) == 1 else [0, len(weights) - 1]
    chosen = [focused_latents(weights[a], num_latents) for a in drawn]
    for b in range(len(labels)):
      path = draw_attention(
        clouds[b], [weights[a][b] for a in drawn], chosen, titles[b], os.fspath(out / f"attention_{b}.png")
      )
      lines += [f"## {titles[b].capitalize()}", "", f"![attention {b}]({epath.Path(path).name})", ""]
  index = out / "index.md"
  index.write_text("\n".join(lines))
  return os.fspath(index)
