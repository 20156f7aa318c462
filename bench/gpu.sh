#!/usr/bin/env bash
# GPU extraction benchmark as one command, for a machine with no network and no TensorFlow (the lent H200).
#   bash bench/gpu.sh fetch       # here, with network: put the wheels the GPU machine lacks into bench/wheelhouse
#   bash bench/gpu.sh             # there: Xception 299, InceptionV3 299, ResNet50 224, Lite0 320; batch 256,
#                                 #   8192 JPEGs; both decoders where DALI imports; about 5 minutes on an H200
#   bash bench/gpu.sh --images 64 --batch 16 --models xception:71   # a CPU smoke run of the same path
# Options after the first go to bench/gpu.py (--help there). The JSON goes to $OUT/gpu_bench.json when $OUT is
# set, else experiments/bench/gpu.json; the table is printed last.
# The wheelhouse (git-ignored: name bench/wheelhouse in the device tool's `carry`) holds keras, namex and
# optree for CPython 3.12 on x86-64 (the GPU machine has jax, numpy, opencv, typer, tqdm, h5py, rich, ...);
# they are installed with --no-deps into /tmp/kk-site, which only this run sees. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ "${1:-}" = fetch ]; then
  rm -rf bench/wheelhouse && mkdir -p bench/wheelhouse
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d bench/wheelhouse "keras==${KERAS_VERSION:-3.15.1}" namex optree
  ls -l bench/wheelhouse
  exit 0
fi

if compgen -G "bench/wheelhouse/*.whl" >/dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kk-site \
    bench/wheelhouse/*.whl
  export PYTHONPATH="/tmp/kk-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c "import jax" 2>/dev/null; then export KERAS_BACKEND="${KERAS_BACKEND:-jax}"; fi
# Each measurement is a fresh process (never two on the GPU at once): the persistent compilation cache lets
# the model-only run reuse what the end-to-end run compiled.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/kk-jax-cache}"
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu.py "$@"
