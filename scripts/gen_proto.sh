#!/usr/bin/env bash
# Regenerate the committed Python stubs from controlplane/proto/llmctl.proto (run after editing it).
# Generated from the repo root with -I. so the grpc module imports `from controlplane.proto import llmctl_pb2`.
# tests/controlplane/test_proto.py fails when the committed stubs differ from what this produces.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. controlplane/proto/llmctl.proto
