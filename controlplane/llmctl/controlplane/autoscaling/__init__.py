"""Autoscaling on queue depth: the policy (pure), its state in SQL, the job that applies it."""
