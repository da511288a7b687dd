"""Pictures of a sound run: a clip's waveform or log-mel spectrogram, and where a few latents listen.

Axes: B clips, S samples, H heads, N latents, M input tokens; T patches (raw audio) or frames (mel), F mel
bands. `visualize_run(run, out_dir)` takes a finished run (`train.load_run`) whose `input.front_end` is
`audio` (raw patches) or `mel` and feeds the first few evaluation clips exactly as evaluation does (their
input masks, their eval keys). It writes one PNG per clip and an `index.md`, the paper's appendix pictures
of audio attention:
- `audio`: the waveform, then per latent its cross-attention over the T patches as a curve over time (one
  step per patch of `samples_per_patch` samples);
- `mel`: the standardised log-mel spectrogram [F, T] the front end computes (no SpecAugment: evaluation),
  then per latent its cross-attention over the T x F values on the same time-frequency axes.
Each latent's weights are averaged over heads and sum to one over the clip's M tokens; the padded tail of
a clip shorter than the crop is shaded (its tokens are masked: weight 0). The latents shown per
cross-attend (the first and the last) are those with the most concentrated weights (lowest entropy, as
`visualize.focused_latents`), most focused first.
"""

from __future__ import annotations

import io
import os
from typing import NamedTuple

import haiku as hk
import jax
import ml_collections
import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perceiver_jax import data
from perceiver_jax.data import sounds
from perceiver_jax.tools import visualize
from perceiver_jax.training import build, run_files, train

FRONT_ENDS = ("audio", "mel")
NUM_LATENTS = 4
MAX_EXAMPLES = 32


class Clips(NamedTuple):
  samples: np.ndarray  # [B, S, 1]
  masks: np.ndarray  # bool [B, S]: False on the padded tail
  labels: np.ndarray  # [B, K] multi-hot, or [B] class indices
  indices: np.ndarray  # [B] global eval indices, what eval_step derives the clips' keys from


class Attention(NamedTuple):
  logits: np.ndarray  # [B, num_classes]
  weights: list[np.ndarray]  # per cross-attend, [B, N, T] (audio) or [B, N, T, F] (mel), heads averaged
  spectrogram: np.ndarray | None  # [B, T, F] standardised log-mel (mel runs), else None


def is_audio_run(config: ml_collections.ConfigDict) -> bool:
  return config.input.front_end in FRONT_ENDS


def is_audio_workdir(workdir: str) -> bool:
  """Whether the run in `workdir` (its config.json, if any) reads sound through `audio` or `mel`."""
  path = epath.Path(workdir) / run_files.CONFIG
  return path.exists() and run_files.read_json(path).get("input", {}).get("front_end") in FRONT_ENDS


def eval_clips(config: ml_collections.ConfigDict, count: int) -> Clips:
  """The first `count` real clips of the eval split, in eval order, with masks and global indices."""
  if jax.process_count() > 1:
    raise ValueError("Visualization runs in a single process.")
  picked = []
  for index, batch in enumerate(data.eval_batches(config)):
    size = len(batch["eval_mask"])
    mask = batch.get("input_mask")
    for p in np.flatnonzero(batch["eval_mask"]):
      real = np.ones(batch["inputs"].shape[1], bool) if mask is None else mask[p]
      picked.append((batch["inputs"][p], real, batch["label"][p], index * size + p))
    if len(picked) >= count:
      break
  samples, masks, labels, indices = zip(*picked[:count], strict=True)
  return Clips(np.stack(samples), np.stack(masks), np.stack(labels), np.asarray(indices))


def grid(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The token grid of the front end: (T,) patches for `audio`, (T, F) frames x bands for `mel`."""
  fe = hk.transform(lambda: build.front_end(config)).apply({}, None)  # Only its static settings.
  return (fe.num_patches,) if config.input.front_end == "audio" else tuple(fe.grid)


def attention_weights(
  config: ml_collections.ConfigDict, params, state, clips: Clips, example_keys
) -> Attention:
  """Logits, heads-averaged cross-attention on the token grid and (mel) the spectrogram of `clips`."""
  if config.model_name != "perceiver":
    raise ValueError(f"Attention needs a Perceiver run; this run's model_name={config.model_name!r}.")
  if not is_audio_run(config):
    raise ValueError(f"Not a sound run: input.front_end={config.input.front_end!r}, not one of {FRONT_ENDS}.")
  logits, weights = visualize.averaged_attention(
    config, params, state, clips.samples, example_keys, clips.masks
  )
  shape = grid(config)
  maps = [w.reshape(*w.shape[:2], *shape) for w in weights]  # [B, N, *grid]
  spec = None
  if config.input.front_end == "mel":
    spectrogram = hk.transform(lambda s: build.front_end(config).spectrogram(s)).apply
    spec = np.asarray(jax.jit(lambda s: spectrogram({}, None, s[..., 0]))(clips.samples))
  return Attention(logits, maps, spec)


def sample_rate(config: ml_collections.ConfigDict) -> float | None:
  """The clips' rate in Hz, where the config says it (`input.sample_rate` or `dataset.sample_rate`)."""
  return config.input.get("sample_rate") or config.dataset.get("sample_rate")


def focused_latents(weights: np.ndarray, count: int) -> np.ndarray:
  """The `count` latents of weights [B, N, ...] with the lowest entropy over the tokens, most focused 1st."""
  return visualize.focused_latents(weights[:, None], count)


# ----- drawing


def _save(fig: Figure, path: str) -> str:
  FigureCanvasAgg(fig)  # Agg whatever matplotlib's default backend: no display is ever needed.
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=90)
  epath.Path(path).write_bytes(buffer.getvalue())
  return path


def draw_clip(
  config: ml_collections.ConfigDict,
  clip: np.ndarray,
  mask: np.ndarray,
  spectrogram: np.ndarray | None,
  weights: list[np.ndarray],
  latents: list[np.ndarray],
  title: str,
  path: str,
) -> str:
  """clip [S, 1], mask [S]; weights per cross-attend drawn [N, T] or [N, T, F]; latents per cross-attend."""
  rate = sample_rate(config)
  scale = 1.0 / rate if rate else 1.0
  unit = "s" if rate else "samples"
  num_samples = clip.shape[0]
  real_end = (int(np.flatnonzero(mask)[-1]) + 1 if mask.any() else 0) * scale
  rows = 1 + sum(len(chosen) for chosen in latents)
  fig = Figure(figsize=(8.0, 1.6 + 0.9 * rows), layout="constrained")
  axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
  end = num_samples * scale
  if spectrogram is None:
    axes[0].plot(np.arange(num_samples) * scale, clip[:, 0], linewidth=0.4, color="black")
    axes[0].set_ylabel("waveform", fontsize=7)
    edges = np.arange(weights[0].shape[-1] + 1) * config.input.get("samples_per_patch") * scale
  else:
    step, length = config.input.get("frame_step"), config.input.get("frame_length")
    extent = (0.0, ((spectrogram.shape[0] - 1) * step + length) * scale, 0, spectrogram.shape[1])
    axes[0].imshow(
      spectrogram.T, origin="lower", aspect="auto", extent=extent, cmap="magma", interpolation="nearest"
    )
    axes[0].set_ylabel("log-mel band", fontsize=7)
    end = max(end, extent[1])
  axes[0].set_title(title, fontsize=9)
  row = 1
  for attend, (w, chosen) in enumerate(zip(weights, latents, strict=True)):
    name = "first" if attend == 0 else "last"
    for n in chosen:
      ax = axes[row]
      if spectrogram is None:
        ax.stairs(w[n], edges, fill=True, color="tab:blue")
        ax.set_ylim(0, max(float(w[n].max()), 1e-12) * 1.05)
      else:
        # Each map on its own scale, 0 to its maximum (as the image maps).
        ax.imshow(
          w[n].T,
          origin="lower",
          aspect="auto",
          extent=extent,
          cmap="viridis",
          vmin=0.0,
          interpolation="nearest",
        )
      ax.set_ylabel(f"{name}\nlatent {n}", fontsize=7)
      colour = "black" if spectrogram is None else "white"
      ax.text(
        0.995,
        0.92,
        f"max {w[n].max():.3f}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=6,
        color=colour,
      )
      row += 1
  for ax in axes:
    ax.tick_params(labelsize=6)
    if real_end < num_samples * scale:  # The padded tail: masked tokens, weight 0.
      ax.axvspan(real_end, num_samples * scale, color="grey", alpha=0.3, linewidth=0)
    ax.set_xlim(0, end)
  axes[-1].set_xlabel(f"time ({unit})", fontsize=7)
  return _save(fig, path)


# ----- the run


def _classes(config: ml_collections.ConfigDict, indices) -> str:
  """Class indices, by name for the embedded sounds (their kinds)."""
  names = sounds.KINDS if config.dataset.name == "sounds" else None
  return ", ".join(names[k] if names else str(k) for k in indices) or "none"


def _label_text(config, label: np.ndarray) -> str:
  if np.ndim(label) == 0:
    return f"label {_classes(config, [int(label)])}"
  return f"labels {_classes(config, np.flatnonzero(label > 0.5))}"


def _prediction_text(config, logits: np.ndarray, multi_hot: bool) -> str:
  if not multi_hot:
    return f"predicted {_classes(config, [int(logits.argmax())])}"
  return f"predicted {_classes(config, np.flatnonzero(logits > 0.0))}"  # Sigmoid above 1/2.


def visualize_run(
  run: train.Run, out_dir: str, num_examples: int = 4, num_latents: int = NUM_LATENTS, workdir=None
) -> str:
  """Writes one PNG per clip plus `index.md` into `out_dir`; returns the index's path."""
  config, state = run.config, run.state
  if not is_audio_run(config):
    raise ValueError(
      f"{workdir or 'the run'} is not a sound run (input.front_end={config.input.front_end!r})."
    )
  if not 0 < num_examples <= MAX_EXAMPLES or num_latents <= 0:
    raise ValueError(
      f"--examples={num_examples} must be in 1..{MAX_EXAMPLES} and --latents={num_latents} positive."
    )
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  clips = eval_clips(config, num_examples)
  keys = train.eval_example_keys(state.rng, clips.indices)
  attention = attention_weights(config, state.params, state.state, clips, keys)
  drawn = [0] if len(attention.weights) == 1 else [0, len(attention.weights) - 1]
  chosen = [focused_latents(attention.weights[a], num_latents) for a in drawn]
  mel = config.input.front_end == "mel"
  multi_hot = clips.labels.ndim == 2
  m, i = config.model, config.input
  tokens = "x".join(str(t) for t in attention.weights[0].shape[2:])
  results = epath.Path(workdir) / run_files.RESULTS if workdir else None
  score = ""
  if results and results.exists():
    metrics = run_files.read_json(results).get("eval", {})
    score = next((f" Eval {k} {metrics[k]:.3f}." for k in ("mAP", "top1") if k in metrics), "")
  lines = [
    f"# Where the Perceiver of `{workdir or 'a run'}` listens, at step {run.step}",
    "",
    f"{m.num_latents} latents x {m.latent_channels} channels, {m.num_cross_attends} cross-attend(s) with "
    f"{m.num_cross_heads} head(s); front end `{i.front_end}` ({tokens} tokens)." + score,
    "",
    (
      "Top: the standardised log-mel spectrogram the front end computes. Below: per latent, its "
      "cross-attention over the time-frequency values"
      if mel
      else "Top: the waveform. Below: per latent, its cross-attention over the patches of "
      f"{i.samples_per_patch} samples, a step per patch"
    )
    + " (averaged over heads; each sums to one over the clip, coloured or scaled from 0 to its own "
    f"maximum), for the {len(chosen[0])} latents of the first and the last cross-attend with the most "
    "concentrated weights over these clips. Grey: the padded tail of a short clip (masked).",
    "",
  ]
  for b in range(len(clips.indices)):
    labels, predicted = (
      _label_text(config, clips.labels[b]),
      _prediction_text(config, attention.logits[b], multi_hot),
    )
    title = f"clip {b}: {labels}; {predicted}"
    path = draw_clip(
      config,
      clips.samples[b],
      clips.masks[b],
      attention.spectrogram[b] if mel else None,
      [attention.weights[a][b] for a in drawn],
      chosen,
      title,
      os.fspath(out / f"attention_{b}.png"),
    )
    lines += [f"## {title[0].upper() + title[1:]}", "", f"![attention {b}]({epath.Path(path).name})", ""]
  index = out / "index.md"
  index.write_text("\n".join(lines))
  return os.fspath(index)
