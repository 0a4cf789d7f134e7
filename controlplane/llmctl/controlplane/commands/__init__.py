"""The operator's `llmctl` commands, one module per command group; controlplane/cli.py mounts them.

Modules here import only typer, rich and the standard library at the top; grpc, sqlalchemy and the
engine are imported inside the commands, so `llmctl --help` and `llmctl serve` stay light.
"""
