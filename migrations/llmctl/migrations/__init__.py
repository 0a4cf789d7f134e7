"""The control plane's Alembic migrations (env.py, versions/); llmctl.controlplane.db.session runs them."""
