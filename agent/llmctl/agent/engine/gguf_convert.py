"""Convert a llama.cpp GGUF file (Llama architecture) into a Hugging Face safetensors folder.

The output is what `LlamaForCausalLM.from_pretrained` reads: config.json, model.safetensors (float32,
dequantized), generation_config.json and the tokenizer files with the chat template. We convert once and
serve the folder, so the engine has a single weight format to load.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig

from llmctl.agent.engine.errors import UnsupportedModel
from llmctl.agent.engine.paths import sha256_file, write_marker

ProgressCallback = Callable[[int, int, str], None]
"""Called as progress(done, total, what) after each step of a conversion."""

GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str) -> str:
    """The Hugging Face Llama parameter name for a GGUF tensor name."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in LAYER_TENSORS:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{LAYER_TENSORS[part]}.{kind}"
    if gguf_name == "rope_freqs.weight":
        # Llama 3.1 style files bake their rope scaling into per-dimension frequencies; mapping those
        # back to a rope_parameters dict is not implemented, and ignoring them would change the model.
        raise UnsupportedModel(
            "this GGUF stores rope frequencies as a tensor (Llama 3.1 rope scaling), which the converter "
            "does not support; use the model's Hugging Face safetensors folder instead"
        )
    raise UnsupportedModel(f"GGUF tensor {gguf_name!r} has no Llama equivalent")


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k projection rows.

    llama.cpp's convert_hf_to_gguf.py interleaves each head's two rotary halves, rows
    [h, half, i] -> [h, i, half], because ggml rotates adjacent pairs while HF rotates halves.
    Here the rows arrive as [num_heads, head_dim // 2, 2] and go back to [num_heads, 2, head_dim // 2].
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise UnsupportedModel(f"{rows} q/k rows do not split into {num_heads} rotary heads")
    split = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _float32_value(value: float) -> float:
    """GGUF stores floats as float32; this gives 1e-05 back instead of 9.999999747378752e-06."""
    return float(str(np.float32(value)))


def _rope_parameters(reader: gguf.GGUFReader, arch: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": _float32_value(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
    }
    kind = _field(reader, f"{arch}.rope.scaling.type")
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    legacy_linear = _field(reader, f"{arch}.rope.scale_linear")
    if kind is None and legacy_linear is not None and legacy_linear != 1.0:
        kind, factor = "linear", legacy_linear
    if kind in (None, "none"):
        return params
    if kind == "linear":
        return {**params, "rope_type": "linear", "factor": _float32_value(factor)}
    if kind == "yarn":
        original = _field(reader, f"{arch}.rope.scaling.original_context_length")
        params.update(rope_type="yarn", factor=_float32_value(factor))
        if original is not None:
            params["original_max_position_embeddings"] = int(original)
        return params
    raise UnsupportedModel(f"GGUF rope scaling type {kind!r} is not supported (linear and yarn are)")


def llama_config(reader: gguf.GGUFReader, vocab_size: int, tied: bool) -> LlamaConfig:
    """A LlamaConfig from the file's llama.* metadata; vocab_size comes from the embedding's shape."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UnsupportedModel(
            f"GGUF architecture {arch!r} is not supported by the converter; it converts 'llama' files "
            "(Llama, Mistral, SmolLM). Pass a Hugging Face safetensors folder for other models"
        )

    def required(key: str) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise UnsupportedModel(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(required("embedding_length"))
    heads = int(required("attention.head_count"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        dtype="float32",
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(required("feed_forward_length")),
        num_hidden_layers=int(required("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 2048)),
        rms_norm_eps=_float32_value(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_parameters=_rope_parameters(reader, arch),
        tie_word_embeddings=tied,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )


def _dequantize(tensor: Any) -> np.ndarray:
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise UnsupportedModel(f"GGUF tensor type {tensor.tensor_type.name} cannot be dequantized") from exc
    # GGUF lists dimensions innermost first; torch wants them outermost first. np.array copies, so the
    # result owns writable memory instead of viewing the read-only memory map.
    return np.array(values, dtype=np.float32).reshape([int(d) for d in reversed(tensor.shape)])


def convert_gguf(
    gguf_path: Path, out_dir: Path, *, sha256: str | None = None, progress: ProgressCallback | None = None
) -> Path:
    """Convert `gguf_path` into the HF folder `out_dir`, which is replaced as a whole.

    The folder is built next to `out_dir` and renamed into place with its completion marker (holding
    `sha256`, computed when not given) already inside, so readers never see a half-written model.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    try:
        reader = gguf.GGUFReader(gguf_path)
    except (ValueError, OSError) as exc:
        raise UnsupportedModel(f"{gguf_path} is not a readable GGUF file: {exc}") from exc
    sha256 = sha256 or sha256_file(gguf_path)
    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise UnsupportedModel(f"{gguf_path} has no token_embd.weight tensor")
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    config = llama_config(reader, vocab_size=int(embedding.shape[1]), tied="output.weight" not in names)

    total = len(reader.tensors) + 2
    report = progress or (lambda done, total, what: None)
    state: dict[str, torch.Tensor] = {}
    for done, tensor in enumerate(reader.tensors, start=1):
        name = hf_tensor_name(tensor.name)
        values = _dequantize(tensor)
        if ".attn_q." in tensor.name:
            values = unpermute_rotary(values, config.num_attention_heads)
        elif ".attn_k." in tensor.name:
            values = unpermute_rotary(values, config.num_key_value_heads)
        state[name] = torch.from_numpy(values)
        report(done, total, tensor.name)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        del state  # the float32 weights are model-sized; free them before the tokenizer is built
        config.save_pretrained(staging)
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        ).save_pretrained(staging)
        report(total - 1, total, "model.safetensors")
        # transformers rebuilds the tokenizer (vocab, merges, special tokens, chat template) from the
        # file's tokenizer.* metadata; saving it gives the engine plain tokenizer files.
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer.save_pretrained(staging)
        # mkdtemp and safetensors create owner-only entries; a model cache should read like any folder.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        for path in staging.iterdir():
            path.chmod(0o666 & ~umask)
        write_marker(staging, sha256)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
        report(total, total, "tokenizer")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
