#!/usr/bin/env bash
# Runs experiments/train.py (or another entry point) on every host of a Cloud TPU VM pod slice.
#
# One `gcloud compute tpus tpu-vm ssh --worker=all` starts the same command on all hosts; each host runs one
# process, and jax.distributed finds the others by itself (perceiver_jax.training.distributed.initialize detects
# the pod). The repository must already be at $REPO_DIR on every host and its Python environment made by
# scripts/setup_tpu_vm.sh (see docs/scale_out.md); the workdir may be a gs:// path.
#
#   TPU_NAME=perceiver-v3-64 ZONE=europe-west4-a scripts/launch_tpu_pod.sh \
#       --config=configs/imagenet.py --config.dataset.data_dir=gs://BUCKET/tfds --workdir=gs://BUCKET/runs/ff
#   TPU_NAME=... ZONE=... scripts/launch_tpu_pod.sh experiments/evaluate.py --workdir=gs://BUCKET/runs/ff
#
# The entry script is the first argument only when that argument is not a flag (does not start with '-');
# otherwise it is experiments/train.py and every argument goes to it.
#
# Environment: TPU_NAME, ZONE (required); PROJECT; REPO_DIR (default ~/perceiver_jax); PYTHON (default
# ~/perceiver_venv/bin/python, the environment of scripts/setup_tpu_vm.sh). The exit status is non-zero
# when the command fails on any host. DETACH=1 runs the processes under nohup with a log per host in
# $REPO_DIR/logs, so that they outlive the ssh sessions (otherwise a dropped connection stops the run;
# rerunning the command resumes it); the launcher then waits DETACH_CHECK_S seconds (default 120) and
# exits non-zero, printing the log's end, if the process of any host has already failed.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REPO_DIR="${REPO_DIR:-~/perceiver_jax}"
PYTHON="${PYTHON:-~/perceiver_venv/bin/python}"
GCLOUD="${GCLOUD:-gcloud}"

entry=experiments/train.py
if [[ $# -gt 0 && "$1" != -* ]]; then
  entry="$1"
  shift
  if [[ "$entry" != *.py ]]; then
    echo "error: the entry script must be a .py path (e.g. experiments/evaluate.py), got '$entry'." >&2
    exit 2
  fi
fi
args=""
if [[ $# -gt 0 ]]; then
  args=$(printf ' %q' "$@")
fi
command="$PYTHON $(printf '%q' "$entry")$args"

ssh_all() {
  "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all \
    --command="cd $REPO_DIR && $1"
}

if [[ "${DETACH:-0}" != 1 ]]; then
  ssh_all "$command"
  exit $?
fi

# Detached: each host's exit status lands in logs/<host>.status next to its log.
ssh_all "mkdir -p logs && rm -f logs/\$(hostname).status && nohup sh -c '$command; echo \$? > logs/\$(hostname).status' \
  > logs/\$(hostname).log 2>&1 < /dev/null &"
sleep "${DETACH_CHECK_S:-120}"
# A host whose process ended with a non-zero status fails the check (and prints the end of its log).
if ! ssh_all 'for s in logs/$(hostname).status; do if [ -f "$s" ] && [ "$(cat "$s")" != 0 ]; then
    echo "$(hostname): exit status $(cat "$s"); end of logs/$(hostname).log:"; tail -n 20 "logs/$(hostname).log"; exit 1; fi; done'; then
  echo "error: the run failed on at least one host (above); fix it and run the same command again." >&2
  exit 1
fi
echo "Started on every host; logs in $REPO_DIR/logs/<host>.log."
