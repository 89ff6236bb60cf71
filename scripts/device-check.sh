#!/usr/bin/env bash
# Runs on the GPU machine (start it with `bash .device/run.sh bash scripts/device-check.sh [tests...]`): the GPU
# tests (all of dist/test/gpu, or the given files), then the benchmark unless LMOE_NO_BENCH is set. Full logs and
# bench results go under $OUT; a short summary is printed last.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export LMOE_KERNEL_CACHE=/tmp/lmoe-kernels
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(dist/test/gpu/*.test.js)
node --test --test-concurrency=1 "${tests[@]}" > "$OUT/test-gpu.log" 2>&1
status=$?
if [ -z "${LMOE_NO_BENCH:-}" ]; then
  LMOE_BENCH_OUT="$OUT/h200.json" node dist/bench/gpu.js > "$OUT/bench.log" 2>&1 || status=1
fi
echo "== GPU: $(cat "$OUT/gpu.txt")"
echo "== failures (first 60 lines of context):"
grep -n -A12 "^not ok\|^    not ok\|^  not ok" "$OUT/test-gpu.log" | head -60
echo "== measured:"
grep "^# " "$OUT/test-gpu.log" | grep -v "^# Subtest" | tail -40
[ -f "$OUT/bench.log" ] && tail -25 "$OUT/bench.log"
exit $status
