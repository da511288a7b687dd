#!/usr/bin/env bash
# Makes the Python environment of a Cloud TPU VM host: Python >= 3.11 (jax 0.10 needs it), a venv at
# $VENV (default ~/perceiver_venv) with `jax[tpu]` and this repository installed editable. Run it on every
# host once (scripts/launch_tpu_pod.sh then uses $VENV/bin/python):
#
#   gcloud compute tpus tpu-vm ssh perceiver-v3-64 --zone=europe-west4-a --worker=all \
#       --command='bash ~/perceiver_jax/scripts/setup_tpu_vm.sh'
#
# tpu-ubuntu2204-base ships Python 3.10; Ubuntu 22.04's own python3.11 packages (jammy-updates) are
# installed then. Images with Python >= 3.11 (e.g. Ubuntu 24.04 based) use theirs.
set -euo pipefail
REPO_DIR="${REPO_DIR:-$HOME/perceiver_jax}"
VENV="${VENV:-$HOME/perceiver_venv}"

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" > /dev/null &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2> /dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if ! python=$(find_python) || ! "$python" -c 'import venv, ensurepip' 2> /dev/null; then
  echo "Installing Python 3.11 from the Ubuntu archive."
  sudo apt-get update -q
  sudo apt-get install -y -q python3.11 python3.11-venv
  python=python3.11
fi
"$python" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e "$REPO_DIR[tpu]"
"$VENV/bin/python" -c 'import jax, perceiver_jax, sys; print(sys.version.split()[0], "jax", jax.__version__)'
