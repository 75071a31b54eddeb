#!/usr/bin/env bash
# Builds the libFuzzer decode harnesses (tests/fuzz) with clang + ASan/UBSan in build-fuzz/, writes a seed corpus
# per codec, runs every harness for a fixed time and prints, per harness, the executions run and the crashes found.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET [NAME_REGEX]]      defaults: 60 s, every harness
#   e.g. tools/fuzz.sh 20            tools/fuzz.sh 300 'qsgd|topk'
#
# Results go to build-fuzz/fuzz-results/<name>/{corpus,artifacts,fuzz.log}; the corpus is kept between runs
# (libFuzzer adds the inputs that found new coverage), the artifacts are cleared at the start of each run.
# A crash leaves artifacts/crash-<sha1> (reproduce: build-fuzz/tests/fuzz/gradzip_fuzz_<name> <that file>).
# Exit status: 0 when no harness crashed, 1 when any did, 2 on a build or usage error.
set -uo pipefail

secs=${1:-60}
filter=${2:-.}
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET [NAME_REGEX]]" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-fuzz"
cxx=$(command -v clang++ || command -v clang++-14 || true)
if [ -z "$cxx" ]; then
  echo "fuzz.sh: clang++ not found (libFuzzer needs clang)" >&2
  exit 2
fi
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
jobs=$(nproc 2>/dev/null || echo 2)

mkdir -p "$build"
# CUDA off: the sanitizer and fuzzer flags would reach nvcc (the harnesses exercise the CPU codecs).
cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" \
  -DGRADZIP_BUILD_FUZZERS=ON -DGRADZIP_BUILD_TESTS=OFF -DGRADZIP_BUILD_BENCHMARKS=OFF \
  -DGRADZIP_BUILD_EXAMPLES=OFF -DGRADZIP_INSTALL=OFF -DGRADZIP_ENABLE_CUDA=OFF >"$build/fuzz-configure.log" 2>&1 ||
  { cat "$build/fuzz-configure.log" >&2; echo "fuzz.sh: configure failed" >&2; exit 2; }
cmake --build "$build" --target gradzip_fuzzers -j "$jobs" || { echo "fuzz.sh: build failed" >&2; exit 2; }

manifest="$build/tests/fuzz/fuzz_targets.tsv"
writer="$build/tests/fuzz/gradzip_fuzz_corpus"
results="$build/fuzz-results"
mkdir -p "$results"

total_crashes=0
summary=()
printf '\n%-20s %-36s %12s %8s %8s  %s\n' "harness" "spec" "executions" "corpus" "crashes" "note"
while IFS=$'\t' read -r name bin spec; do
  [ -n "$name" ] || continue
  [[ "$name" =~ $filter ]] || continue
  dir="$results/$name"
  mkdir -p "$dir/corpus"
  rm -rf "$dir/artifacts"
  mkdir -p "$dir/artifacts"
  if ! "$writer" "$spec" "$dir/corpus" >"$dir/corpus.log" 2>&1; then
    printf '%-20s %-36s %12s %8s %8s  %s\n' "$name" "$spec" "-" "-" "-" \
      "skipped: $(tail -n 1 "$dir/corpus.log" | cut -c1-100)"
    continue
  fi
  "$bin" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/fuzz.log" 2>&1
  rc=$?
  execs=$(grep -m1 '^stat::number_of_executed_units:' "$dir/fuzz.log" | awk '{print $2}')
  [ -n "$execs" ] || execs=$(grep -Eo 'Done [0-9]+ runs' "$dir/fuzz.log" | awk '{print $2}' | tail -n 1)
  [ -n "$execs" ] || execs="?"
  ncorpus=$(find "$dir/corpus" -type f | wc -l)
  crashes=$(find "$dir/artifacts" -type f | wc -l)
  note=""
  if [ "$crashes" -eq 0 ] && [ "$rc" -ne 0 ]; then
    crashes=1  # died without leaving an artifact (e.g. failed at start-up)
  fi
  if [ "$crashes" -gt 0 ]; then
    first=$(find "$dir/artifacts" -type f | head -n 1)
    why=$(grep -m1 -E 'ERROR: (Address|Undefined|Leak)Sanitizer|runtime error:|deadly signal|gradzip fuzz:|ERROR: libFuzzer' \
      "$dir/fuzz.log" | cut -c1-160)
    note="${why:-exit code $rc} ${first:+-> $first}"
    summary+=("== $name ($spec): $why")
    summary+=("   log: $dir/fuzz.log")
    if [ -n "$first" ]; then
      summary+=("   input ($(wc -c <"$first") bytes, hex, first 256): $(od -An -tx1 -v -N256 "$first" | tr -d ' \n')")
    fi
  fi
  total_crashes=$((total_crashes + crashes))
  printf '%-20s %-36s %12s %8s %8s  %s\n' "$name" "$spec" "$execs" "$ncorpus" "$crashes" "$note"
done <"$manifest"

echo
echo "fuzz.sh: ${secs}s per harness, $total_crashes crash(es) in total"
for line in "${summary[@]}"; do echo "$line"; done
[ "$total_crashes" -eq 0 ] || exit 1
exit 0
