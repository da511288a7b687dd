"""Draws a trained Perceiver's cross-attention maps and position features as PNGs with an index.md.

  python scripts/visualize.py --workdir=W [--examples=4] [--latents=8] [--out=W/visualize]

W is a finished run of experiments/train.py; see docs/visualize.md for what the pictures show. A point-cloud
run (input.front_end=points, any model) gets its clouds and, for a Perceiver, at most 4 latents' attention
over the points (perceiver_jax.tools.visualize_points). A run fed video (input.front_end=video, or multimodal
with a video modality) gets a few frames of its clips with where some latents look in space and time, and
with several modalities how much attention each gets (perceiver_jax.tools.visualize_video). A sound run
(input.front_end=audio or mel) gets each clip's waveform or log-mel spectrogram with at most 4 latents'
attention over time (perceiver_jax.tools.visualize_audio).
"""

import os
import sys

from absl import app, flags
from etils import epath

from perceiver_jax import cli
from perceiver_jax.tools import visualize, visualize_audio, visualize_points, visualize_video
from perceiver_jax.training import train

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory written by experiments/train.py.", required=True
)
_EXAMPLES = flags.DEFINE_integer("examples", 4, "Evaluation images to draw.", lower_bound=1)
_LATENTS = flags.DEFINE_integer(
  "latents", visualize.NUM_LATENTS, "Latents drawn per cross-attend.", lower_bound=1
)
_OUT = flags.DEFINE_string("out", None, "Output directory (default: <workdir>/visualize).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  workdir = _WORKDIR.value
  out = _OUT.value or os.fspath(epath.Path(workdir) / "visualize")
  examples, latents = _EXAMPLES.value, _LATENTS.value
  if visualize_points.is_points_workdir(workdir):  # Any model: the clouds at least.
    run = _load(train.load_run, workdir)
    index = visualize_points.visualize_run(run, out, examples, min(latents, 4), workdir=workdir)
  elif visualize_video.is_video_workdir(workdir):
    run = _load(visualize.load, workdir)
    index = visualize_video.visualize_run(run, out, min(examples, 8), workdir=workdir)
  elif visualize_audio.is_audio_workdir(workdir):
    run = _load(visualize.load, workdir)
    index = visualize_audio.visualize_run(run, out, examples, min(latents, 4), workdir=workdir)
  else:
    index = visualize.visualize_run(_load(visualize.load, workdir), out, examples, latents, workdir=workdir)
  print(f"Wrote {index}")


def _load(loader, workdir: str):
  """The run `loader` reads from `workdir`, or one clear line: nothing is wrong with the code: the run."""
  try:
    return loader(workdir)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"visualize: {e}")


if __name__ == "__main__":
  cli.run(main)
