"""The engine runs on a GPU box that has only torch, triton, transformers, safetensors and numpy."""

from __future__ import annotations

import subprocess
import sys

SERVER_SIDE = ("gguf", "rich", "typer", "fastapi", "uvicorn", "prometheus_client", "httpx", "grpc",
               "sqlalchemy", "textual")


def test_engine_and_kernels_import_without_server_side_packages():
    code = (
        "import sys, llmctl.kernels, llmctl.agent.engine.engine, llmctl.agent.engine.async_engine\n"
        "import llmctl.agent.engine.loader\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_SIDE!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
