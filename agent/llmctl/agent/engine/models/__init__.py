"""Model forwards owned by the engine."""
