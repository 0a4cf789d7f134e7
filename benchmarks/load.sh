#!/usr/bin/env bash
# Load through the gateway (issue 16; docs/reliability.md, "Load"): guidellm at 1, 2, 4, ... 256 concurrent
# streams, then a 10-minute soak with the RSS of every process of the stack sampled. Starts `llmctl up --detach`
# in a scratch $LLMCTL_HOME unless --home names a running one; results in benchmarks/results/load.json.
#
#   bash benchmarks/load.sh [--home DIR] [--levels 1,2,4] [--soak-seconds 60] [--json FILE] ...  (--help: all)
#
# Needs `make install` and `make load-tool` (guidellm in .venv-load). Exit 1 when the verdict fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ ! -x .venv-load/bin/guidellm && " $* " != *" --guidellm "* ]]; then
  echo "guidellm is not installed: run \`make load-tool\` (it goes in .venv-load, apart from llmctl's .venv)" >&2
  exit 2
fi
exec "$PYTHON" -m benchmarks.load "$@"
