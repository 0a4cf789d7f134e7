"""Model references -> local HF folders, GGUF conversion, and reading config, weights and tokenizer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from llmctl.agent.engine.errors import ModelNotFound, UnsupportedModel
from llmctl.agent.engine.gguf_convert import GLOBAL_TENSORS, LAYER_TENSORS
from llmctl.agent.engine.loader import load_model_config, load_state_dict, load_tokenizer, resolve_model
from llmctl.agent.engine.paths import COMPLETE_MARKER, sha256_file
from tests.factories import CORPUS

HF_TO_GGUF = {hf: name for name, hf in GLOBAL_TENSORS.items()} | {
    f"{hf}.weight": part for part, hf in LAYER_TENSORS.items()
}


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows (LlamaModel.permute), written independently."""
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.N.<module>.weight
    return f"blk.{layer}.{HF_TO_GGUF[rest]}.weight"


def write_gguf(hf_folder: Path, path: Path) -> Path:
    """Write an F32 GGUF of an HF Llama folder the way llama.cpp's converter lays it out."""
    config = json.loads((hf_folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    tokenizer_json = json.loads((hf_folder / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_tokens)
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in special else 1 for token, _ in vocab])
    merges = tokenizer_json["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    model = LlamaForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config["tie_word_embeddings"]:
            continue
        values = tensor.numpy().copy()
        if ".q_proj." in name:
            values = llama_cpp_permute(values, config["num_attention_heads"])
        elif ".k_proj." in name:
            values = llama_cpp_permute(values, config["num_key_value_heads"])
        writer.add_tensor(gguf_name(name), values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_a_local_hf_folder_resolves_to_itself(tiny_llama: Path) -> None:
    assert resolve_model(str(tiny_llama)) == tiny_llama


def test_gguf_round_trip_gives_the_same_logits_and_tokens(
    tiny_llama: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    folder = resolve_model(str(tiny_gguf), home=tmp_path)
    assert folder == tmp_path / "models" / f"gguf-{sha256_file(tiny_gguf)[:16]}"

    original = LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    converted = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11, 64, 128]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, atol=1e-5, rtol=0)

    # The rows really were stored permuted, so equal logits prove the converter undid it.
    stored = next(t for t in gguf.GGUFReader(tiny_gguf).tensors if t.name == "blk.0.attn_q.weight")
    q_proj = original.model.layers[0].self_attn.q_proj.weight
    assert not np.array_equal(stored.data, q_proj.detach().numpy())
    assert torch.equal(converted.model.layers[0].self_attn.q_proj.weight, q_proj)

    before, after = AutoTokenizer.from_pretrained(tiny_llama), load_tokenizer(folder)
    for text in CORPUS[:6]:
        assert after.encode(text) == before.encode(text)
    messages = [{"role": "user", "content": "Hello world!"}]
    assert after.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        before.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )
    assert after.eos_token == "<|im_end|>"


def test_a_gguf_is_converted_only_once(tiny_gguf: Path, tmp_path: Path) -> None:
    folder = resolve_model(str(tiny_gguf), home=tmp_path)
    marker_mtime = (folder / COMPLETE_MARKER).stat().st_mtime_ns
    start = time.perf_counter()
    assert resolve_model(str(tiny_gguf), home=tmp_path) == folder
    assert time.perf_counter() - start < 1.0
    assert (folder / COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime


def test_a_registered_name_resolves_to_the_pulled_folder(smollm2_path: Path) -> None:
    assert resolve_model("smollm2-135m") == smollm2_path


def test_a_registered_name_not_yet_pulled_says_how_to_pull(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="run `llmctl models pull smollm2-135m`"):
        resolve_model("smollm2-135m", home=tmp_path)


@pytest.mark.parametrize("ref", ["no such model", "./missing-folder", "missing.gguf"])
def test_unknown_references_are_model_not_found(ref: str) -> None:
    with pytest.raises(ModelNotFound) as error:
        resolve_model(ref)
    assert "accepted" in str(error.value) or "no such GGUF file" in str(error.value)


def test_a_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="without config.json"):
        resolve_model(str(tmp_path))


def test_a_hub_id_without_a_reachable_hub_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Offline mode makes this deterministic on machines that can reach the hub.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound, match="hub is not reachable from this machine"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", home=tmp_path)


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    assert resolve_model(str(tmp_path)) == tmp_path
    with pytest.raises(
        UnsupportedModel, match="GPT2LMHeadModel.*LlamaForCausalLM, MistralForCausalLM, Qwen2"
    ):
        load_model_config(tmp_path)


def test_load_model_config_reads_a_llama(tiny_llama: Path) -> None:
    config = load_model_config(tiny_llama)
    assert config.model_type == "llama" and config.num_key_value_heads == 2


def test_load_state_dict_reads_sharded_weights_under_hf_names(tiny_llama: Path, tmp_path: Path) -> None:
    model = LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()

    sharded = load_state_dict(tmp_path, torch.bfloat16)
    single = load_state_dict(tiny_llama, torch.bfloat16)

    assert sharded.keys() == single.keys()
    assert "model.layers.1.self_attn.k_proj.weight" in single and "model.embed_tokens.weight" in single
    for name, tensor in single.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(sharded[name], tensor)
        assert torch.equal(tensor, model.state_dict()[name].to(torch.bfloat16))


def test_smollm2_converted_from_gguf_answers_paris(smollm2_path: Path) -> None:
    config = load_model_config(smollm2_path)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert config.rope_parameters["rope_theta"] == 100000.0 and config.max_position_embeddings == 8192
    assert config.tie_word_embeddings and (config.bos_token_id, config.eos_token_id) == (1, 2)

    tokenizer = load_tokenizer(smollm2_path)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tokenizer.chat_template
    model = LlamaForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])
