#!/usr/bin/env bash
# Installs what gradzip needs on a Debian machine (system packages through apt-get, Python packages into .venv),
# configures and builds the C++ library, tests, benchmarks and examples into build/, and installs the Python
# package `gradzip` (the PyTorch extension) into .venv. Safe to run any number of times: it installs only what is
# missing and rebuilds incrementally.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build"

PKGS=(build-essential cmake ninja-build pkg-config googletest libgtest-dev libgmock-dev libbenchmark-dev
      openmpi-bin libopenmpi-dev clang clang-format libclang-rt-14-dev libfuzzer-14-dev python3
      dataset-fashion-mnist iproute2 zlib1g-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python first (the C++ build below finds LibTorch in it): a venv with torch (the CPU build of 2.13.0 lies on this
# kind of machine; never let pip build in isolation against torch, it would fetch a multi-GB CUDA build).
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
"$PY" -c "import scikit_build_core, pytest, tqdm, numpy, matplotlib, yaml" 2>/dev/null ||
  "$PY" -m pip install -q "scikit-build-core>=0.10" pytest tqdm numpy matplotlib pyyaml

# C++ build. GRADZIP_PYTHON (the venv's interpreter) lets CMake find LibTorch in the venv's torch, which adds
# gradzip::torch, the LibTorch example and its tests; an existing build/ picks the option up on the next run.
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADZIP_WERROR=ON -DGRADZIP_PYTHON="$PY"
elif ! grep -qx "GRADZIP_PYTHON:FILEPATH=$PY" "$BUILD/CMakeCache.txt"; then
  cmake "$BUILD" -DGRADZIP_PYTHON="$PY"
fi
cmake --build "$BUILD" -j "$(nproc)"

# Incremental: scikit-build-core reuses build-py/, so an unchanged tree rebuilds nothing.
echo "[setup] building/installing the gradzip PyTorch extension into .venv"
"$PY" -m pip install -q --no-build-isolation -e "$ROOT"
