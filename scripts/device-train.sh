#!/usr/bin/env bash
# Runs on the GPU machine (`bash .device/run.sh bash scripts/device-train.sh`): the training GPU tests, then the
# training benchmark (bench/train.ts: MoE and dense runs, train_* metrics merged into $OUT/h200.json, loss curves
# in $OUT/h200-train.json, the MoE model exported in bf16 to $OUT/minimax-tiny). LMOE_NO_TRAIN_BENCH skips the
# benchmark; LMOE_TRAIN_STEPS / LMOE_TRAIN_SECONDS are passed through. Needs data/corpus.jsonl carried along.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export LMOE_KERNEL_CACHE=/tmp/lmoe-kernels
status=0
node --test --test-concurrency=1 dist/test/gpu/train-*.test.js > "$OUT/logs.txt" 2>&1 || status=1
grep -E "^# (tests|pass|fail|skipped)|^not ok|^# [a-z]" "$OUT/logs.txt" | head -40
grep -n -B2 -A14 "^    not ok\|^not ok\|^  not ok" "$OUT/logs.txt" | head -120
if [ -z "${LMOE_NO_TRAIN_BENCH:-}" ]; then
  cp bench/results/h200.json "$OUT/h200.json"
  LMOE_BENCH_OUT="$OUT/h200.json" LMOE_TRAIN_SERIES="$OUT/h200-train.json" LMOE_EXPORT="$OUT/minimax-tiny" \
    LMOE_TRAIN_OUT=/tmp/runs node dist/bench/train.js > /tmp/train-bench.log 2>&1 || status=1
  cat /tmp/train-bench.log >> "$OUT/logs.txt"
  grep -v "^moe step\|^dense step" /tmp/train-bench.log | tail -30
fi
exit $status
