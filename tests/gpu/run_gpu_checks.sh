#!/usr/bin/env bash
# Everything gradzip checks on a CUDA machine, in one call (the GPU box of the device tool, or any CUDA host):
#   1. configure + build the CUDA kernels, their tests and the CUDA benchmark (build-gpu/, -j$(nproc));
#   2. ctest -L gpu (CUDA codecs vs the CPU reference bit for bit, poisoned outputs, odd sizes, misaligned buffers,
#      corrupted payloads, device feedback steps; the NCCL communicator);
#   3. the torch extension built against the CUDA torch, and the CUDA pytest suite (tests/torch_ext/test_cuda.py);
#   4. benchmarks: codec bandwidth vs a D2D copy, Top-K vs torch.topk, DDP step (no hook / gradzip / PowerSGD);
#   5. (stage fedsim, not in all) the federated simulator over torch.distributed NCCL (torchrun, 1 process) vs the
#      single-process run of the same config: rounds.csv bytes equal, losses equal to 1e-5 (compare_fedsim.py).
# Results go to $OUT (or ./gpu-out): ctest/pytest logs, cuda_codecs.json, torch_bench.json.
#   tests/gpu/run_gpu_checks.sh [cpp|torch|bench|fedsim|all]...      (default: all; fedsim needs the torch stage's
#   install, in this call or an earlier one on the same machine)
# GoogleTest is taken from the system, or from GTEST_ROOT (e.g. a carried copy of libgtest.a + headers).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
stages="${*:-all}"
want() { [[ " $stages " == *" all "* || " $stages " == *" $1 "* ]]; }
JOBS="$(nproc)"
PY="${PYTHON:-python3}"
rc=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

if want cpp || want bench; then
  extra=()
  [[ -n "${GTEST_ROOT:-}" ]] && extra+=("-DGTEST_ROOT=$GTEST_ROOT")
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADZIP_ENABLE_CUDA=ON -DGRADZIP_BUILD_EXAMPLES=OFF \
    -DGRADZIP_BUILD_BENCHMARKS=ON -DGRADZIP_INSTALL=OFF "${extra[@]}" > "$OUT/configure.log" 2>&1 \
    || { tail -30 "$OUT/configure.log"; exit 1; }
  ninja -C build-gpu -j"$JOBS" gradzip_cuda_test gradzip_cuda_lowrank_test gradzip_cuda_codecs_bench > "$OUT/build.log" 2>&1 \
    || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  ninja -C build-gpu -j"$JOBS" gradzip_collectives_nccl_test >> "$OUT/build.log" 2>&1 || true
fi
if want cpp; then
  (cd build-gpu && ctest -L gpu --output-on-failure --timeout 900) > "$OUT/ctest_gpu.log" 2>&1 || rc=1
  grep -E "tests passed|tests failed|Failed|FAILED|Passed|\*\*\*" "$OUT/ctest_gpu.log" | tail -25
  ./build-gpu/tests/compressors/gradzip_cuda_test --gtest_brief=1 2>&1 | tail -4
fi
if want torch; then
  export CMAKE_ARGS="${CMAKE_ARGS:-} -DGRADZIP_ENABLE_CUDA=ON"
  "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/torch_build.log" 2>&1 \
    || { tail -40 "$OUT/torch_build.log"; rc=1; }
  "$PY" -c "import gradzip, torch; print('gradzip cuda kernels:', gradzip._C.cuda_kernels, torch.__version__)"
  "$PY" -m pytest -q -x tests/torch_ext/test_cuda.py > "$OUT/pytest_cuda.log" 2>&1 || rc=1
  tail -15 "$OUT/pytest_cuda.log"
fi
if want bench; then
  ./build-gpu/benchmarks/gradzip_cuda_codecs_bench --sizes 25000000,100000000 --iters 30 \
    --json "$OUT/cuda_codecs.json" | tee "$OUT/cuda_codecs.txt"
  if "$PY" -c "import gradzip" 2>/dev/null; then
    "$PY" benchmarks/cuda/bench_torch.py --out "$OUT/torch_bench.json" 2>&1 | tee "$OUT/torch_bench.txt"
  fi
fi
if [[ " $stages " == *" fedsim "* ]]; then
  fs=(--task synthetic_logreg --model logreg --num-clients 8 --clients-per-round 4 --local-steps 2 --rounds 3
      --no-progress --no-plots)
  timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m gradzip.fedsim --distributed \
    --backend nccl --out "$OUT/fedsim-nccl" "${fs[@]}" > "$OUT/fedsim.log" 2>&1 || { echo "fedsim nccl FAILED"; rc=1; }
  timeout 300 "$PY" -m gradzip.fedsim --out "$OUT/fedsim-local" "${fs[@]}" >> "$OUT/fedsim.log" 2>&1 \
    || { echo "fedsim local FAILED"; rc=1; }
  tail -30 "$OUT/fedsim.log"
  "$PY" tests/gpu/compare_fedsim.py "$OUT/fedsim-nccl/rounds.csv" "$OUT/fedsim-local/rounds.csv" || rc=1
fi
exit $rc
