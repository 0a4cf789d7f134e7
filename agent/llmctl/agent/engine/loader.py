"""Turn a model reference into a local Hugging Face folder, and read its config, weights and tokenizer.

A reference is a registered short name (pulled with `llmctl models pull`), a local HF folder, a .gguf
file (converted once into the cache) or a hub id (downloaded when the hub is reachable).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from llmctl.agent.engine.errors import ModelNotFound, UnsupportedModel
from llmctl.agent.engine.paths import REGISTRY, models_dir, read_marker, sha256_file

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

# Only what the engine reads: configs, HF-named weights, tokenizer and chat template. Repos often also
# carry consolidated.safetensors or GGUF copies of the same weights, which would double the download.
QUANT_SCALE_SUFFIXES = (".scales", ".weight_scale")

HUB_PATTERNS = ["*.json", "model*.safetensors", "tokenizer*", "*.jinja", "*.model", "*.txt"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

ACCEPTED = (
    f"a registered name ({', '.join(sorted(REGISTRY))}), a local folder with config.json, "
    "a .gguf file, or a Hugging Face hub id like owner/name"
)


def resolve_model(ref: str, home: Path | None = None) -> Path:
    """The local HF-style folder for `ref`, converting or downloading it first when needed."""
    if ref in REGISTRY:
        folder = models_dir(home) / ref
        if read_marker(folder) != REGISTRY[ref].sha256:
            raise ModelNotFound(f"model {ref!r} is not in the local cache; run `llmctl models pull {ref}`")
        return folder
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelNotFound(
            f"{path} is a folder without config.json; give an HF model folder or a .gguf file"
        )
    if path.is_file():
        if path.suffix == ".gguf":
            return _converted_gguf(path, home)
        raise ModelNotFound(f"{path} is a file but not a .gguf; accepted: {ACCEPTED}")
    if path.suffix == ".gguf":
        raise ModelNotFound(f"no such GGUF file: {path}")
    if _HUB_ID.fullmatch(ref):
        return _from_hub(ref, home)
    raise ModelNotFound(f"unknown model {ref!r}; accepted: {ACCEPTED}")


def _converted_gguf(path: Path, home: Path | None) -> Path:
    # Keyed by content, so a renamed or re-downloaded copy of the same file reuses one conversion.
    sha256 = sha256_file(path)
    folder = models_dir(home) / f"gguf-{sha256[:16]}"
    if read_marker(folder) != sha256:
        # gguf is needed only to convert: a GPU box serving HF folders does not have it.
        from llmctl.agent.engine.gguf_convert import convert_gguf

        convert_gguf(path, folder, sha256=sha256)
    return folder


def _from_hub(ref: str, home: Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(ref, allow_patterns=HUB_PATTERNS, cache_dir=models_dir(home) / "hub"))
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(
            f"{ref!r} is neither a local path nor a public model on the Hugging Face hub"
        ) from exc
    except OSError as exc:
        # huggingface_hub reports DNS, connection, offline mode and HTTP failures as OSError subclasses.
        raise ModelNotFound(
            f"{ref!r} is not a local path and the Hugging Face hub is not reachable from this machine "
            f"({type(exc).__name__}); pass a local HF folder or a .gguf file instead"
        ) from exc
    if not (folder / "config.json").is_file():
        raise ModelNotFound(f"hub model {ref!r} has no config.json; it is not a transformers checkpoint")
    return folder


def load_model_config(folder: Path) -> PretrainedConfig:
    """The folder's transformers config; UnsupportedModel unless it is an architecture the engine runs."""
    config_path = Path(folder) / "config.json"
    try:
        raw = json.loads(config_path.read_text())
    except FileNotFoundError as exc:
        raise ModelNotFound(f"{config_path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise UnsupportedModel(f"{config_path} is not valid JSON: {exc}") from exc
    # Checked on the raw JSON first: AutoConfig itself fails, less clearly, on model types it does not know.
    architectures = raw.get("architectures") or []
    if not any(arch in SUPPORTED_ARCHITECTURES for arch in architectures):
        found = ", ".join(architectures) or "no architecture"
        raise UnsupportedModel(
            f"{folder} is {found}; the engine supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return AutoConfig.from_pretrained(folder)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the model, following the shard index when there is one."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / shard for shard in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelNotFound(f"{folder} lacks weight shards listed in its index: {', '.join(missing)}")
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFound(f"{folder} has no *.safetensors weights")
    return files


def load_state_dict(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All weights under their HF names, floating point ones cast to `dtype`.

    A tied checkpoint has no lm_head.weight; the model reuses model.embed_tokens.weight
    (config.tie_word_embeddings).
    """
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as shard:
            for name in shard.keys():
                tensor = shard.get_tensor(name)
                # Quantization scales keep their format's dtype (AWQ: float16; int8: float32).
                keep = not tensor.is_floating_point() or name.endswith(QUANT_SCALE_SUFFIXES)
                state[name] = tensor if keep else tensor.to(dtype)
    return state


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot load a tokenizer from {folder}: {exc}") from exc
