#!/usr/bin/env bash
# Quick start, command 1: set everything up and run the main demo, a small bandwidth-vs-accuracy sweep
# (configs/sweeps/demo.toml: federated runs on a synthetic task and a short Fashion-MNIST run, algorithms x
# compressors x seeds, two worker processes). It writes out/sweeps/demo/report.md with the results table and the
# plots, and prints where they are. Running it again reuses every finished run. Extra arguments go to
# `python -m gradzip.sweep` (e.g. --workers 1, --force, --no-progress; --help lists them). Last, a short table of
# every codec on one 256K-float vector (build/examples/gradzip-bench-codecs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
OUT="out/sweeps/demo"
echo "[demo] sweep: configs/sweeps/demo.toml -> $OUT"
"$ROOT/.venv/bin/python" -m gradzip.sweep --config configs/sweeps/demo.toml --out "$OUT" "$@"
for BENCH in "$ROOT/build/examples/gradzip-bench-codecs" "$ROOT/build/examples/cpp/gradzip-bench-codecs"; do
  if [ -x "$BENCH" ]; then
    echo
    echo "[demo] every codec on one vector of 256K N(0,1) floats:"
    "$BENCH" --size 262144 --min-time 0.01
    break
  fi
done
echo
echo "[demo] report: $ROOT/$OUT/report.md"
echo "[demo] plots:  $ROOT/$OUT/*.png   table: $ROOT/$OUT/results.csv"
