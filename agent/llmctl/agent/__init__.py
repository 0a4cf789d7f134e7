"""The llmctl agent: the inference engine, its HTTP server, the benchmark and the host daemon."""
