"""Llama-family forward (Llama, Mistral, Qwen2, SmolLM) over a flat mixed batch and a paged KV cache.

GQA, neox RoPE (with llama3 frequency scaling), RMSNorm, SwiGLU, tied embeddings, optional qkv bias.
q/k/v and gate/up are fused into one matmul each at load time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import kernels
from agent.engine.batch import ModelInput
from agent.engine.errors import UnsupportedModel
from agent.engine.kv_pool import KVLayer

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return inv_freq
    if rope_type != "llama3":
        raise UnsupportedModel(f"rope scaling {rope_type!r} is not supported (default and llama3 are)")
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated smoothly.
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    between = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, between, scaled)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_size, self.kv_size = heads * head_dim, kv_heads * head_dim
        self.qkv_proj = nn.Linear(hidden, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, hidden, bias=False)
        self.scale = head_dim**-0.5

    def forward(self, x, cos, sin, kv: KVLayer, batch: ModelInput) -> torch.Tensor:
        qkv = kernels.linear(x, self.qkv_proj.weight, self.qkv_proj.bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        t = x.shape[0]
        q = q.view(t, self.heads, self.head_dim)
        k = k.view(t, self.kv_heads, self.head_dim)
        v = v.view(t, self.kv_heads, self.head_dim)
        q, k = kernels.rotary_embedding(q, k, cos, sin)
        k_cache, v_cache, scales = kv.k, kv.v, kv.scales()
        kernels.write_kv(k, v, k_cache, v_cache, batch.slot_mapping, **scales)
        out = torch.empty_like(q)  # [T, H, D]
        nd = batch.num_decodes
        if batch.decode is not None:
            out[:nd] = kernels.paged_attention_decode(
                q[:nd], k_cache, v_cache, batch.decode, self.scale, **scales
            )
        if batch.prefill is not None:
            out[nd:] = kernels.prefill_attention(
                q[nd:], k_cache, v_cache, batch.prefill, self.scale, **scales
            )
        return kernels.linear(out.view(t, self.q_size), self.o_proj.weight)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = kernels.silu_and_mul(kernels.linear(x, self.gate_up_proj.weight))
        return kernels.linear(h, self.down_proj.weight)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, head_dim: int, bias: bool):
        super().__init__()
        self.eps = cfg.rms_norm_eps
        self.input_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.self_attn = Attention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, bias
        )
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)


class LlamaModel(nn.Module):
    """Weights as one module tree; forward takes a ModelInput and per-layer KV pools."""

    def __init__(self, cfg):
        super().__init__()
        archs = getattr(cfg, "architectures", None) or ["LlamaForCausalLM"]
        if archs[0] not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModel(
                f"architecture {archs[0]} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        self.cfg = cfg
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        bias = bool(getattr(cfg, "attention_bias", False)) or archs[0] == "Qwen2ForCausalLM"
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg, self.head_dim, bias) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        self.lm_head = None if self.tie_word_embeddings else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        self.register_buffer("inv_freq", rope_inv_freq(self.head_dim, theta, rope), persistent=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def rope_cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @torch.inference_mode()
    def forward(self, batch: ModelInput, kv_caches: list[KVLayer]) -> torch.Tensor:
        """Returns float32 logits [S, vocab] for batch.logits_rows."""
        x = self.embed_tokens[batch.input_ids]
        cos, sin = self.rope_cos_sin(batch.positions, x.dtype)
        residual = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            h, residual = kernels.rms_norm(x, layer.input_layernorm, layer.eps, residual)
            h = layer.self_attn(h, cos, sin, kv, batch)
            h, residual = kernels.rms_norm(h, layer.post_attention_layernorm, layer.eps, residual)
            x = layer.mlp(h)
        x = x[batch.logits_rows]
        h, _ = kernels.rms_norm(x, self.norm, self.cfg.rms_norm_eps, residual[batch.logits_rows])
        return kernels.linear(h, self.head_weight).float()


def hf_to_engine_state_dict(hf: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename HF Llama tensors to ours, fusing q/k/v and gate/up."""
    out = {"embed_tokens": hf["model.embed_tokens.weight"], "norm": hf["model.norm.weight"]}
    if "lm_head.weight" in hf:
        out["lm_head"] = hf["lm_head.weight"]
    for i in range(num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out[f"layers.{i}.input_layernorm"] = hf[p + "input_layernorm.weight"]
        out[f"layers.{i}.post_attention_layernorm"] = hf[p + "post_attention_layernorm.weight"]
        out[f"layers.{i}.self_attn.qkv_proj.weight"] = torch.cat(
            [hf[a + "q_proj.weight"], hf[a + "k_proj.weight"], hf[a + "v_proj.weight"]]
        )
        if a + "q_proj.bias" in hf:
            out[f"layers.{i}.self_attn.qkv_proj.bias"] = torch.cat(
                [hf[a + "q_proj.bias"], hf[a + "k_proj.bias"], hf[a + "v_proj.bias"]]
            )
        out[f"layers.{i}.self_attn.o_proj.weight"] = hf[a + "o_proj.weight"]
        out[f"layers.{i}.mlp.gate_up_proj.weight"] = torch.cat(
            [hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]]
        )
        out[f"layers.{i}.mlp.down_proj.weight"] = hf[p + "mlp.down_proj.weight"]
    return out


def build_model(cfg, hf_state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device: str) -> LlamaModel:
    """Build on the meta device and load the weights by assignment: no double allocation."""
    with torch.device("meta"):
        model = LlamaModel(cfg)
    state = hf_to_engine_state_dict(hf_state_dict, cfg.num_hidden_layers)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if m != "inv_freq"]
    if missing or unexpected:
        raise UnsupportedModel(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    model.inv_freq = rope_inv_freq(model.head_dim, theta, rope).to(device)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            packed = kernels.prepack_linear_weight(module.weight.data)
            if packed is not module.weight.data:
                del module.weight
                module.register_buffer("weight", packed, persistent=False)
    # The LM head reads the (tied) embedding as a matmul weight; a packed copy costs vocab x hidden.
    head = model.embed_tokens if model.lm_head is None else model.lm_head
    model.head_weight = kernels.prepack_linear_weight(head.data)
    return model.eval()
