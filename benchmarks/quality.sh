#!/usr/bin/env bash
# The quality numbers of docs/quantization.md: every quantization against the fp32 reference
# (the dequantized Q4_1 GGUF of SmolLM2-135M), one `llmctl eval` each, JSON under $OUT.
# About 20 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
MODEL="${MODEL:-smollm2-135m}"
LLMCTL="${LLMCTL:-.venv/bin/llmctl}"
mkdir -p "$OUT"
run() {  # name, then candidate flags
  local name=$1; shift
  echo "== $name: $*"
  "$LLMCTL" eval "$MODEL" "$@" --dtype float32 --json "$OUT/quality-$name.json"
}
run int8 --quantization int8
run rtn4 --quantization rtn4
run awq --quantization awq
run kv-int8 --kv-cache-dtype int8
run kv-fp8 --kv-cache-dtype fp8
"${LLMCTL%llmctl}python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine

out = Path(sys.argv[1])
rows = {}
for name in ("int8", "rtn4", "awq", "kv-int8", "kv-fp8"):
    d = json.loads((out / f"quality-{name}.json").read_text())
    c, r = d["candidate"], d["reference"]
    rows[name] = {
        "linear_bytes_vs_fp16": round(c["linear_bytes_vs_fp16"], 4),
        "perplexity_increase": round(c["perplexity"] / r["perplexity"] - 1, 5),
        "kl_divergence": round(c["kl_divergence"], 5),
        "top1_agreement": round(c["top1_agreement"], 4),
        "accuracy": c["accuracy"], "reference_accuracy": r["accuracy"],
        "kv_bytes_per_token": c["kv_bytes_per_token"],
    }
rows["awq_vs_rtn4_ppl_increase_ratio"] = round(
    rows["awq"]["perplexity_increase"] / rows["rtn4"]["perplexity_increase"], 4)
blocks = {}
for kv in ("auto", "int8", "fp8"):
    e = LLMEngine(EngineConfig(model="smollm2-135m", dtype="bfloat16", kv_cache_dtype=kv, kv_cache_memory=64 << 20))
    blocks[kv] = {"kv_bytes_per_token": e.info.kv_bytes_per_token, "blocks_in_64MiB": e.info.num_kv_blocks}
rows["kv_blocks_bf16_model"] = blocks
(out / "quality-summary.json").write_text(json.dumps(rows, indent=2) + "\n")
print(json.dumps(rows, indent=2))
PY
