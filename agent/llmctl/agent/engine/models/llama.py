"""Llama-family forward (Llama, Mistral, Qwen2, SmolLM) over a flat mixed batch and a paged KV cache.

GQA, neox RoPE (with llama3 frequency scaling), RMSNorm, SwiGLU, tied embeddings, optional qkv bias.
q/k/v and gate/up are fused into one matmul each at load time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmctl import kernels
from llmctl.agent.engine.batch import ModelInput
from llmctl.agent.engine.errors import UnsupportedModel
from llmctl.agent.engine.kv_pool import KVLayer
from llmctl.agent.engine.models.linear import DenseLinear

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
        self.qkv_proj = DenseLinear(hidden, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = DenseLinear(self.q_size, hidden, bias=False)
        self.scale = head_dim**-0.5

    def forward(self, x, cos, sin, kv: KVLayer, batch: ModelInput) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        t = x.shape[0]
        q = q.view(t, self.heads, self.head_dim)
        k = k.view(t, self.kv_heads, self.head_dim)
        v = v.view(t, self.kv_heads, self.head_dim)
        q, k = kernels.rotary_embedding(q, k, cos, sin)
        k_cache, v_cache, scales = kv.k, kv.v, kv.scales()
        kernels.write_kv(k, v, k_cache, v_cache, batch.slot_mapping, **scales)
        decode, prefill = batch.decode, batch.prefill
        if prefill is None:  # an all-decode step (or all-prefill, below) writes its output directly
            out = kernels.paged_attention_decode(q, k_cache, v_cache, decode, self.scale, **scales)
        elif decode is None:
            out = kernels.prefill_attention(q, k_cache, v_cache, prefill, self.scale, **scales)
        else:
            out = torch.empty_like(q)  # [T, H, D]
            nd = batch.num_decodes
            out[:nd] = kernels.paged_attention_decode(q[:nd], k_cache, v_cache, decode, self.scale, **scales)
            out[nd:] = kernels.prefill_attention(q[nd:], k_cache, v_cache, prefill, self.scale, **scales)
        return self.o_proj(out.view(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj = DenseLinear(hidden, 2 * intermediate, bias=False)
        self.down_proj = DenseLinear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


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
        self.head_weight = None
        """The LM head's matmul weight in its prepacked layout, set by finalize()."""
        self.decoder_plan: kernels.DecoderPlan | None = None
        """Set by finalize() where every layer fits kernels.decoder_layers: the decoder loop as one call."""

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
        plan = self.decoder_plan
        if plan is not None and kv_caches[0].k_scale is None and kv_caches[0].k.dtype == x.dtype:
            x, residual = kernels.decoder_layers(
                x, plan, [kv.k for kv in kv_caches], [kv.v for kv in kv_caches], cos, sin, batch.slot_mapping,
                batch.decode, batch.prefill, batch.num_decodes,
            )
        else:
            residual = None
            for layer, kv in zip(self.layers, kv_caches, strict=True):
                h, residual = kernels.rms_norm(x, layer.input_layernorm, layer.eps, residual)
                h = layer.self_attn(h, cos, sin, kv, batch)
                h, residual = kernels.rms_norm(h, layer.post_attention_layernorm, layer.eps, residual)
                x = layer.mlp(h)
        x = x[batch.logits_rows]
        h, _ = kernels.rms_norm(x, self.norm, self.cfg.rms_norm_eps, residual[batch.logits_rows])
        head = self.head_weight
        if head is None:  # not finalized yet (calibration runs on the plain weights)
            head = self.embed_tokens if self.lm_head is None else self.lm_head
        return kernels.linear(h, head).float()


# Fused layer -> the checkpoint layers it concatenates along the output features, in order.
FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
UNFUSED = ("self_attn.o_proj", "mlp.down_proj")
LINEAR_NAMES = tuple(FUSED) + UNFUSED
# Tensor suffix -> the dim the output features run along (AWQ stores [in, out]; the rest [out, ...]).
OUT_DIM = {"weight": 0, "bias": 0, "weight_scale": 0, "qweight": 1, "qzeros": 1, "scales": 1}
PACKED = ("qweight", "qzeros")  # eight output features per int32


def fused_split_sizes(cfg) -> dict[str, list[int]]:
    """Output features of each part of the fused layers, in FUSED order."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    return {
        "self_attn.qkv_proj": [cfg.num_attention_heads * head_dim, kv, kv],
        "mlp.gate_up_proj": [cfg.intermediate_size, cfg.intermediate_size],
    }


def hf_to_engine_state_dict(hf: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename HF Llama tensors to ours, fusing q/k/v and gate/up (dense or quantized tensors alike)."""
    out = {"embed_tokens": hf["model.embed_tokens.weight"], "norm": hf["model.norm.weight"]}
    if "lm_head.weight" in hf:
        out["lm_head"] = hf["lm_head.weight"]
    for i in range(num_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.input_layernorm"] = hf[p + "input_layernorm.weight"]
        out[f"layers.{i}.post_attention_layernorm"] = hf[p + "post_attention_layernorm.weight"]
        for fused, parts in FUSED.items():
            for suffix, dim in OUT_DIM.items():
                names = [f"{p}{part}.{suffix}" for part in parts]
                present = [n in hf for n in names]
                if all(present):
                    out[f"layers.{i}.{fused}.{suffix}"] = torch.cat([hf[n] for n in names], dim=dim)
                elif any(present):
                    missing = [n for n, ok in zip(names, present, strict=True) if not ok]
                    raise UnsupportedModel(f"checkpoint has {names[present.index(True)]} but not {missing}")
        for name in UNFUSED:
            for suffix in OUT_DIM:
                if f"{p}{name}.{suffix}" in hf:
                    out[f"layers.{i}.{name}.{suffix}"] = hf[f"{p}{name}.{suffix}"]
    return out


def engine_to_hf_state_dict(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The inverse of hf_to_engine_state_dict: HF names, fused layers split back into their parts."""
    sizes = fused_split_sizes(cfg)
    out = {"model.embed_tokens.weight": state["embed_tokens"], "model.norm.weight": state["norm"]}
    if "lm_head" in state:
        out["lm_head.weight"] = state["lm_head"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = state[f"layers.{i}.input_layernorm"]
        out[p + "post_attention_layernorm.weight"] = state[f"layers.{i}.post_attention_layernorm"]
        for fused, parts in FUSED.items():
            for suffix, dim in OUT_DIM.items():
                key = f"layers.{i}.{fused}.{suffix}"
                if key in state:
                    split = [n // 8 for n in sizes[fused]] if suffix in PACKED else sizes[fused]
                    for part, tensor in zip(parts, state[key].split(split, dim=dim), strict=True):
                        out[f"{p}{part}.{suffix}"] = tensor.contiguous()
        for name in UNFUSED:
            for suffix in OUT_DIM:
                if f"layers.{i}.{name}.{suffix}" in state:
                    out[f"{p}{name}.{suffix}"] = state[f"layers.{i}.{name}.{suffix}"]
    return out


def replace_linears_in_layer(layer: DecoderLayer, make, names=LINEAR_NAMES) -> None:
    """Swap the layer's linears for make(name, old_module) (name like 'self_attn.qkv_proj')."""
    for name in names:
        owner_name, attr = name.split(".")
        owner = getattr(layer, owner_name)
        setattr(owner, attr, make(name, getattr(owner, attr)))


def replace_linears(model: LlamaModel, make) -> None:
    for layer in model.layers:
        replace_linears_in_layer(layer, make)


# Quantization tensors keep their stored dtypes: AWQ scales are float16 by format, int8 scales float32.
_KEEP_DTYPE = ("scales", "weight_scale")


def build_model(
    cfg, hf_state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device: str, make_linear=None
) -> LlamaModel:
    """Build on the meta device and load the weights by assignment: no double allocation.

    `make_linear(name, dense_module)` returns the quantized module a quantized checkpoint's tensors load
    into. The model comes back unfinalized (plain weights, so it can still be calibrated or quantized).
    """
    with torch.device("meta"):
        model = LlamaModel(cfg)
        if make_linear is not None:
            replace_linears(model, make_linear)
    state = hf_to_engine_state_dict(hf_state_dict, cfg.num_hidden_layers)
    state = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() and not k.endswith(_KEEP_DTYPE) else v.dtype)
        for k, v in state.items()
    }
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # size mismatches
        raise UnsupportedModel(f"checkpoint tensors do not match the model's layers: {exc}") from exc
    missing = [m for m in missing if m != "inv_freq"]
    if missing or unexpected:
        hint = ""
        if any(k.endswith((".qweight", ".weight_scale")) for k in unexpected + missing):
            hint = " (the checkpoint's quantization_config does not match its tensors)"
        raise UnsupportedModel(
            f"checkpoint does not match the model{hint}: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    for name, t in model.state_dict().items():
        if t.dtype != state.get(name, t).dtype:
            raise UnsupportedModel(f"checkpoint tensor {name} is {state[name].dtype}, the layer expects {t.dtype}")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    model.inv_freq = rope_inv_freq(model.head_dim, theta, rope).to(device)
    return model.eval()


def finalize(model: LlamaModel) -> LlamaModel:
    """Prepare for serving: dense weights in the fastest matmul layout, the LM head's weight ready."""
    from llmctl.agent.engine.models.linear import QUANTIZED_LINEARS

    for module in model.modules():
        if isinstance(module, DenseLinear):
            module.prepack()
        elif isinstance(module, QUANTIZED_LINEARS):
            module.prepack(model.embed_tokens.dtype)  # activations run in the embedding's dtype
    # The LM head reads the (tied) embedding as a matmul weight; a packed copy costs vocab x hidden.
    head = model.embed_tokens if model.lm_head is None else model.lm_head
    model.head_weight = kernels.prepack_linear_weight(head.data)
    _packed_weights_in_huge_pages(model)
    model.decoder_plan = decoder_plan(model)
    return model


def _packed_weights_in_huge_pages(model: LlamaModel) -> None:
    """llmctl's packed int8 and 4-bit weights (the C++ kernel's 3-D layouts) moved into one mapping on huge
    pages, in layer order (kernels.in_huge_pages). oneDNN's packed bf16 weights stay where oneDNN put them."""
    from llmctl.agent.engine.models.linear import QUANTIZED_LINEARS

    slots = [(module, name) for module in model.modules() if isinstance(module, QUANTIZED_LINEARS)
             for name in ("weight", "packed_weight")
             if isinstance(t := getattr(module, name, None), torch.Tensor) and t.dim() == 3 and t.device.type == "cpu"]
    for (module, name), copy in zip(slots, kernels.in_huge_pages([getattr(m, n) for m, n in slots]), strict=True):
        setattr(module, name, copy)


def decoder_plan(model: LlamaModel) -> kernels.DecoderPlan | None:
    """The finalized model's layers for kernels.decoder_layers, or None where any of them cannot run there
    (not on CPU, a forced kernel backend, a dtype or quantized layout the C++ kernels do not take)."""
    dtype = model.embed_tokens.dtype
    if not kernels.decoder_layers_available(model.embed_tokens.device) or dtype not in kernels.CPU_DTYPES:
        return None
    norms, linears = [], []
    for layer in model.layers:
        norms += [layer.input_layernorm.data, layer.post_attention_layernorm.data]
        for module in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                       layer.mlp.down_proj):
            args = module.fused_args()
            if args is None:
                return None
            linears.append(args)
    attn = model.layers[0].self_attn
    return kernels.DecoderPlan(norms, linears, attn.heads, attn.kv_heads, attn.head_dim,
                               float(model.layers[0].eps), float(attn.scale))
