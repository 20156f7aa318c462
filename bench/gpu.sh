#!/usr/bin/env bash
# GPU extraction benchmark as one command, for a machine with no network where TensorFlow may be missing.
#   bash bench/gpu.sh                      # H200 defaults: 4096 JPEGs, Xception 299 px, batch 256
#   bash bench/gpu.sh 64 71 16             # CPU smoke run of the same path (images, size, batch)
# Keras runs on JAX when JAX is importable. Packages the machine lacks (keras, namex, optree, typer, tqdm,
# opencv-python-headless, ...) are installed from bench/wheelhouse when that folder exists: fill it beforehand
# on a machine with network with `pip download -d bench/wheelhouse --only-binary=:all: --python-version 3.X
# keras namex optree typer tqdm opencv-python-headless` and carry it along (it is git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d bench/wheelhouse ]; then
  python3 -m pip install --quiet --no-index --find-links bench/wheelhouse keras typer tqdm opencv-python-headless
fi
if python3 -c "import jax" 2>/dev/null; then export KERAS_BACKEND="${KERAS_BACKEND:-jax}"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 bench/gpu.py --images "${1:-4096}" --size "${2:-299}" --batch "${3:-256}"
