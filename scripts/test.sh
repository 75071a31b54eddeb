#!/usr/bin/env bash
# Quick start, command 2: set everything up and run every test: GoogleTest suites, mpirun tests, CMake consumer
# tests and CLI/example smoke tests through CTest, then the PyTorch extension's pytest suite (multi-process gloo).
# GPU tests are labelled `gpu` (CTest) or skip themselves without CUDA (pytest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT/build"
# setup.sh installed the Python package: the LibTorch fixture (written by the Python hook) must not skip.
export GRADZIP_REQUIRE_TORCH_FIXTURE=1
ctest --output-on-failure -LE gpu -j "$(nproc)" --timeout 900
cd "$ROOT"
"$ROOT/.venv/bin/python" -m pytest -q tests/torch_ext
