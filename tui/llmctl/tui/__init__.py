"""The llmctl operator dashboard (Textual)."""
