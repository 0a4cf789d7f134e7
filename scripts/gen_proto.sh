#!/usr/bin/env bash
# Regenerate the committed Python stubs from controlplane/llmctl/controlplane/proto/llmctl.proto (run after
# editing it). The include root is controlplane/, the folder that holds this component's portion of the llmctl
# namespace, so the grpc module imports `from llmctl.controlplane.proto import llmctl_pb2`.
# tests/controlplane/test_proto.py fails when the committed stubs differ from what this produces.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$PWD/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
cd controlplane
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. llmctl/controlplane/proto/llmctl.proto
