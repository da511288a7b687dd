#!/usr/bin/env bash
# Runs experiments/train.py (or another entry point) on every host of a Cloud TPU VM pod slice.
#
# One `gcloud compute tpus tpu-vm ssh --worker=all` starts the same command on all hosts; each host runs one
# process, and jax.distributed finds the others by itself (perceiver_jax.distributed.initialize detects
# the pod). The repository must already be at $REPO_DIR on every host (see docs/scale_out.md) and the
# workdir on storage every host sees (a Filestore/NFS or gcsfuse mount).
#
#   TPU_NAME=perceiver-v3-64 ZONE=europe-west4-a scripts/launch_tpu_pod.sh \
#       --config=configs/imagenet.py --config.dataset.data_dir=/mnt/data/tfds --workdir=/mnt/runs/ff
#   TPU_NAME=... ZONE=... scripts/launch_tpu_pod.sh experiments/evaluate.py --workdir=/mnt/runs/ff
#
# Environment: TPU_NAME, ZONE (required); PROJECT; REPO_DIR (default ~/perceiver_jax); PYTHON (python3);
# DETACH=1 runs the processes under nohup with a log per host in $REPO_DIR/logs, so that they outlive the
# ssh sessions (otherwise a dropped connection stops the run; rerunning the command resumes it).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REPO_DIR="${REPO_DIR:-~/perceiver_jax}"
PYTHON="${PYTHON:-python3}"

entry=experiments/train.py
if [[ $# -gt 0 && "$1" == *.py ]]; then
  entry="$1"
  shift
fi
args=""
if [[ $# -gt 0 ]]; then
  args=$(printf ' %q' "$@")
fi
command="$PYTHON $entry$args"
if [[ "${DETACH:-0}" == 1 ]]; then
  command="mkdir -p logs && nohup $command > logs/\$(hostname).log 2>&1 &"
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all \
  --command="cd $REPO_DIR && $command"
