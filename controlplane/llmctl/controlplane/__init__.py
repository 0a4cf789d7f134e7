"""The llmctl control plane: deployments, revisions, agents, gateway, optimizer."""

import llmctl.agent  # noqa: F401  (turns gRPC fork support off before grpc loads: see llmctl/agent/__init__.py)
