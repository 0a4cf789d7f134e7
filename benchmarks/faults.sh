#!/usr/bin/env bash
# Faults under load with real processes (issue 16; docs/reliability.md, "Faults"): a cut network between an
# agent and the control plane, PostgreSQL restarted and down past the node timeout, kill -9 of the control
# plane and of an agent, each while clients stream. Prints a table and writes benchmarks/results/faults.json.
# About 3-5 minutes with the demo model on a 2-core CPU (MODEL=tiny: about 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
MODEL="${MODEL:-smollm2-135m}"
if [ "$MODEL" = smollm2-135m ]; then
  "${PY%python}llmctl" models pull smollm2-135m >/dev/null
fi
exec "$PY" benchmarks/faults.py --model "$MODEL" --json "${OUT:-benchmarks/results/faults.json}" "$@"
