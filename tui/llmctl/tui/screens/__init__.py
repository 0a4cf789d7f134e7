"""The dashboard's screens: Fleet (home), Deployment, Events."""
