"""The llmctl control plane: deployments, revisions, agents, gateway, optimizer."""
