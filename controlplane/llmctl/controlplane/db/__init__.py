"""The control plane's SQL store: models, engines and sessions, migrations (see session.py)."""
