#!/usr/bin/env bash
# One-shot GPU check (step limits sum to under 8 min on one H200): compiled kernel tests, kernel bandwidth vs device copy, engine
# decode throughput Triton vs reference. Everything lands in $OUT (default ./gpu_out):
#   env.log, kernel_tests.log, bench_kernels.log, kernels.json, bench_engine.log, engine.json, steps.json
# Usage, from anywhere:  OUT=/some/dir bash benchmarks/gpu_check.sh   (PYTHON=... to pick the interpreter)
# Needs only torch, triton, transformers, safetensors, numpy and pytest. A failed or timed-out step is
# recorded in steps.json and the next step still runs; the exit status is the number of failed steps.
set -u

cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
# No install needed: kernels/ and agent/ hold the portions of the llmctl namespace that the kernel tests and
# benchmarks import; the root is there for tests.factories.
export PYTHONPATH=".:kernels:agent${PYTHONPATH:+:$PYTHONPATH}"
# Compiled kernels: the tests and the benchmarks must not fall back to the Triton interpreter.
unset TRITON_INTERPRET
KERNEL_TEST_ARGS="${KERNEL_TEST_ARGS:--q -x}"

FAILED=0
STEPS=""

# step NAME SECONDS CMD...: runs CMD under its own timeout, output tee'd to $OUT/NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    local note="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note="timed out"
    elif [ "$rc" -ne 0 ]; then
        note="failed"
    fi
    [ "$rc" -ne 0 ] && FAILED=$((FAILED + 1))
    echo "=== $name: $note (rc=$rc, ${took}s)"
    STEPS="${STEPS:+$STEPS,}
  {\"step\": \"$name\", \"rc\": $rc, \"status\": \"$note\", \"seconds\": $took}"
}

# shellcheck disable=SC2329  # run through `bash -c env_info`
env_info() {
    nvidia-smi || true
    "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
    "$PY" -c "import llmctl.agent.engine.engine, llmctl.kernels as k; print('llmctl.agent.engine imports ok; kernels backend', k.BACKEND)"
}

export PY
export -f env_info
step env 30 bash -c env_info
# $KERNEL_TEST_ARGS is split on purpose (several pytest flags).
# shellcheck disable=SC2086
step kernel_tests 130 "$PY" -m pytest tests/kernels $KERNEL_TEST_ARGS
step bench_kernels 110 "$PY" benchmarks/bench_kernels.py --device cuda --out "$OUT"
step bench_engine 200 "$PY" benchmarks/bench_engine_kernels.py --device cuda --out "$OUT" --worker-timeout 90

printf '[%s\n]\n' "$STEPS" > "$OUT/steps.json"
echo
echo "=== summary ($FAILED failed step(s)); results in $OUT"
cat "$OUT/steps.json"
exit "$FAILED"
