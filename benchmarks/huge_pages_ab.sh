#!/bin/bash
# Batch-1 decode of bf16, int8 and awq, the quantized weights with and without huge pages (LLMCTL_HUGE_PAGES),
# one `llmctl bench` process per run, rounds alternating, so that the box's drift hits every arm alike.
#   bash benchmarks/huge_pages_ab.sh [OUT_DIR] [ROUNDS]      (results: OUT_DIR/r<round>_<quant>_<0|1>.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
rounds=${2:-3}
mkdir -p "$out"
B=".venv/bin/llmctl bench --model smollm2-135m --dtype bfloat16 --threads 2 --no-prefix-caching --seed 0 --requests 1 --input-len 38:38 --output-len 128:128"
for round in $(seq "$rounds"); do
  for q in none int8 awq; do
    for hp in 1 0; do
      [ "$q" = none ] && [ "$hp" = 0 ] && continue
      LLMCTL_HUGE_PAGES=$hp $B --quantization "$q" --json "$out/r${round}_${q}_${hp}.json" > "$out/r${round}_${q}_${hp}.log" 2>&1
      .venv/bin/python -c "
import json, sys
run = json.load(open(sys.argv[1]))['runs'][0]
print(f'round $round {\"$q\":5} huge pages $hp: TPOT p50 {run[\"tpot_ms\"][\"p50\"]:.2f} ms')" "$out/r${round}_${q}_${hp}.json"
    done
  done
done
echo "results in $out"
