"""Fixtures shared across the suite: the real SmolLM2 checkpoint and a tiny random Llama."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Without a GPU every Triton kernel runs under the interpreter; this must be set before triton loads.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.factories import make_tiny_llama


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The converted SmolLM2-135M folder in the default cache (pulled once; `make test` pulls it first)."""
    from llmctl.agent.models import pull

    return pull("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random-weight Llama HF folder with a real trained tokenizer. Treat it as read-only."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
