"""Plain-torch implementations of every op the engine uses: the oracle for the Triton kernels and the
CPU path. Shapes use T = tokens in the flat batch, H = query heads, KVH = KV heads, D = head dim.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from llmctl.kernels.metadata import DecodeMetadata, PrefillMetadata


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual) normalised, and the new residual. Upcasts to fp32 like the HF Llama reference.

    Memory traffic: reads x (and residual) once, writes out (and residual) once.
    """
    if residual is not None:
        x = x + residual
    residual = x
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype), residual


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding. q: [T, H, D], k: [T, KVH, D], cos/sin: [T, D] already in q's dtype."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    return rotate(q), rotate(k)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: silu(gate) * up."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


FP8_E4M3_MAX = 448.0
"""Largest finite float8_e4m3fn value: fp8 writes clamp to it instead of overflowing to NaN."""


def _check_kv_scales(cache: torch.Tensor, scale: torch.Tensor | None, name: str) -> None:
    """int8 pools carry per-(token, head) scales [num_blocks, block_size, KVH], fp8 pools per-head [KVH]
    scales; other pools none."""
    if cache.dtype == torch.int8:
        if scale is None or scale.shape != cache.shape[:-1] or scale.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 {tuple(cache.shape[:-1])} for an int8 pool")
    elif cache.dtype == torch.float8_e4m3fn:
        if scale is None or scale.shape != cache.shape[-2:-1] or scale.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 [{cache.shape[-2]}] for an fp8 pool")
    elif scale is not None:
        raise ValueError(f"{name} is only for int8/fp8 pools, got a {cache.dtype} pool")


def quantize_kv(
    x: torch.Tensor, cache_dtype: torch.dtype, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [T, KVH, D] -> (codes in cache_dtype, scales). int8: per-(token, head) absmax/127 scales [T, KVH],
    codes round(x / scale) (half away from zero); fp8: x / scale[KVH] clamped to +-448, cast (RNE)."""
    xf = x.float()
    if cache_dtype == torch.int8:
        s = xf.abs().amax(-1) / 127.0
        inv = 1.0 / torch.where(s > 0, s, torch.ones_like(s))  # an all-zero row has s = 0 and codes 0
        y = xf * inv[..., None]
        codes = (torch.sign(y) * torch.floor(y.abs() + 0.5)).clamp_(-127, 127).to(torch.int8)
        return codes, s
    if cache_dtype == torch.float8_e4m3fn:
        y = (xf / scale[:, None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX)
        return y.to(torch.float8_e4m3fn), None
    return x.to(cache_dtype), None


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """codes [..., KVH, D] -> float32 values. scale: [..., KVH] per token (int8) or [KVH] per head (fp8)."""
    if scale is None:
        return codes.float()
    return codes.float() * scale[..., None]


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Scatter k/v [T, KVH, D] into the pools [num_blocks, block_size, KVH, D] at flat slot indices [T].

    int8 pools: the per-(token, head) scale is computed here and stored into k_scale/v_scale
    [num_blocks, block_size, KVH] at the same slots; fp8 pools: k_scale/v_scale [KVH] are read.
    """
    kvh, d = k.shape[1], k.shape[2]
    if k_scale is None and v_scale is None and k_cache.dtype not in (torch.int8, torch.float8_e4m3fn):
        k_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, k)
        v_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, v)
        return
    for x, cache, scale, name in ((k, k_cache, k_scale, "k_scale"), (v, v_cache, v_scale, "v_scale")):
        _check_kv_scales(cache, scale, name)
        codes, token_scale = quantize_kv(x, cache.dtype, scale)
        # CPU index_copy_ has no fp8 kernel: move fp8 codes as bytes.
        cache.view(torch.uint8).view(-1, kvh, d).index_copy_(0, slot_mapping, codes.view(torch.uint8))
        if token_scale is not None:
            scale.view(-1, kvh).index_copy_(0, slot_mapping, token_scale)


def _gather_kv(
    cache: torch.Tensor, scale: torch.Tensor | None, slots: torch.Tensor
) -> torch.Tensor:
    """[N, KVH, D] float32 values at flat slots [N] of a quantized pool."""
    kvh, d = cache.shape[-2], cache.shape[-1]
    codes = cache.view(torch.uint8).view(-1, kvh, d).index_select(0, slots).view(cache.dtype)
    if scale is not None and scale.dim() > 1:
        scale = scale.view(-1, kvh).index_select(0, slots)
    return dequantize_kv(codes, scale)


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: DecodeMetadata,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per sequence over its paged context. q: [B, H, D] -> [B, H, D].

    The reference gathers each sequence's K/V into a padded [B, KVH, L, D] copy: traffic is 2x the KV
    read, plus the padding. Quantized pools (int8 / fp8 with k_scale, v_scale) are dequantized to
    float32 on the gather and attended in float32.
    """
    kvh, d = k_cache.shape[-2], k_cache.shape[-1]
    slots = meta.gather_slots
    b, L = slots.shape
    flat = slots.flatten()
    quantized = k_cache.dtype in (torch.int8, torch.float8_e4m3fn)
    if quantized:
        _check_kv_scales(k_cache, k_scale, "k_scale")
        _check_kv_scales(v_cache, v_scale, "v_scale")
        k = _gather_kv(k_cache, k_scale, flat).view(b, L, kvh, d).transpose(1, 2)  # [B, KVH, L, D] fp32
        v = _gather_kv(v_cache, v_scale, flat).view(b, L, kvh, d).transpose(1, 2)
    else:
        # index_select on the flattened pool is ~2x faster than advanced indexing on CPU.
        k = k_cache.view(-1, kvh, d).index_select(0, flat).view(b, L, kvh, d).transpose(1, 2)  # [B, KVH, L, D]
        v = v_cache.view(-1, kvh, d).index_select(0, flat).view(b, L, kvh, d).transpose(1, 2)
    h = q.shape[1]
    # GQA: the query heads of one KV head attend the same context under the same mask, so they go in
    # as that head's "query rows" [B, KVH, H/KVH, D]: each K/V row is read once per group, not per head.
    qg = q.view(b, kvh, h // kvh, d)
    out = F.scaled_dot_product_attention(
        qg.float() if quantized else qg, k, v, attn_mask=meta.mask[:, None, None, :], scale=scale
    )
    return out.reshape(b, h, d).to(q.dtype)


PREFILL_QUERY_TILE = 512
"""Query rows per tile: bounds the fp32 score buffer and skips keys a causal tile cannot see."""


@functools.lru_cache(maxsize=64)
def _causal_bias(context_start: int, num_tokens: int, device: str) -> torch.Tensor:
    """[n, context_start + n] float32, 0 where query i may see key j, -inf elsewhere. Cached: the same
    chunk shape recurs in every layer of a step."""
    rows = torch.arange(context_start, context_start + num_tokens, device=device)[:, None]
    keys = torch.arange(context_start + num_tokens, device=device)[None, :]
    return torch.zeros(rows.shape[0], keys.shape[1], device=device).masked_fill_(keys > rows, float("-inf"))


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: PrefillMetadata,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Varlen causal prefill: q [T, H, D] holds each sequence's new tokens back to back -> [T, H, D].
    Quantized pools (int8 / fp8 with k_scale, v_scale) are dequantized to float32 and attended in fp32."""
    if k_cache.dtype in (torch.int8, torch.float8_e4m3fn):
        _check_kv_scales(k_cache, k_scale, "k_scale")
        _check_kv_scales(v_cache, v_scale, "v_scale")
    out = torch.empty_like(q)
    r0 = 0
    for i, (n, start) in enumerate(zip(meta.query_lens, meta.starts, strict=True)):
        out[r0 : r0 + n] = _prefill_one(
            q[r0 : r0 + n], k_cache, v_cache, meta.gather_slots[i], start, scale, k_scale, v_scale
        )
        r0 += n
    return out


def _prefill_one(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    context_start: int,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of one sequence's new tokens against its cached context plus themselves.

    q: [n, H, D] for positions context_start .. context_start+n-1; slots: [context_start + n] flat slots
    of every position so far (the new tokens' K/V are already written). Returns [n, H, D].
    Plain bmm + fp32 softmax: on CPU this beats SDPA, which falls back to its math path under GQA
    with a mask. Query heads of a KV head are stacked as rows, so K/V are never repeated.
    """
    n, h, d = q.shape
    kvh = k_cache.shape[-2]
    g = h // kvh
    out_dtype = q.dtype
    if k_cache.dtype in (torch.int8, torch.float8_e4m3fn):
        k = _gather_kv(k_cache, k_scale, slots).transpose(0, 1)  # [KVH, ctx, D] fp32
        v = _gather_kv(v_cache, v_scale, slots).transpose(0, 1)
        q = q.float()
    else:
        k = k_cache.view(-1, kvh, d).index_select(0, slots).transpose(0, 1)  # [KVH, ctx, D]
        v = v_cache.view(-1, kvh, d).index_select(0, slots).transpose(0, 1)
    bias = _causal_bias(context_start, n, str(q.device))
    qg = q.view(n, kvh, g, d).permute(1, 2, 0, 3)  # [KVH, G, n, D]
    out = torch.empty(kvh, g, n, d, dtype=out_dtype, device=q.device)
    for r0 in range(0, n, PREFILL_QUERY_TILE):
        r1 = min(r0 + PREFILL_QUERY_TILE, n)
        visible = context_start + r1  # keys past the tile's last row are masked for every row in it
        rows = r1 - r0
        scores = torch.bmm(
            qg[:, :, r0:r1].reshape(kvh, g * rows, d), k[:, :visible].transpose(1, 2)
        ).view(kvh, g, rows, visible).float()
        scores.mul_(scale).add_(bias[r0:r1, :visible])
        probs = scores.softmax(-1).to(q.dtype).view(kvh, g * rows, visible)
        out[:, :, r0:r1] = torch.bmm(probs, v[:, :visible]).view(kvh, g, rows, d).to(out_dtype)
    return out.permute(2, 0, 1, 3).reshape(n, h, d)


def prepack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """Weights in the layout the matmul reads fastest. On CPU in bf16/fp16 that is oneDNN's blocked
    layout: the same values, 1.3-1.7x faster small-batch matmuls than F.linear's per-call reorder. oneDNN has
    that layout only on CPUs with AVX512 (bw, vl, dq) or AVX-NE-CONVERT; elsewhere (an AVX2-only EPYC) the
    weight stays as it is and F.linear serves it."""
    if (
        weight.device.type == "cpu"
        and weight.dtype in _ONEDNN_PACKED_DTYPES
        and torch.backends.mkldnn.is_available()
        and onednn_packs(weight.dtype)
    ):
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 32)
    return weight


_ONEDNN_PACKED_DTYPES = (torch.bfloat16, torch.float16)


def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether this CPU has oneDNN's fast path for `dtype` (asked once per process)."""
    if dtype not in _ONEDNN_SUPPORT:
        check = (torch.ops.mkldnn._is_mkldnn_bf16_supported if dtype == torch.bfloat16
                 else torch.ops.mkldnn._is_mkldnn_fp16_supported)
        _ONEDNN_SUPPORT[dtype] = bool(check())
    return _ONEDNN_SUPPORT[dtype]


_ONEDNN_SUPPORT: dict[torch.dtype, bool] = {}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, in] @ weight [out, in]^T (+ bias). Reads every weight byte once: the decode bottleneck."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
