"""Plain-torch implementations of every op the engine uses: the oracle for the Triton kernels and the
CPU path. Shapes use T = tokens in the flat batch, H = query heads, KVH = KV heads, D = head dim.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


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


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Scatter k/v [T, KVH, D] into the pools [num_blocks, block_size, KVH, D] at flat slot indices [T]."""
    kvh, d = k.shape[1], k.shape[2]
    k_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, v)


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence over its cached context.

    q: [B, H, D]; slots: [B, L] flat slot of each context position (padded); mask: [B, L] True where valid.
    The reference gathers each sequence's K/V into a padded [B, KVH, L, D] copy: traffic is 2x the KV read.
    """
    kvh, d = k_cache.shape[-2], k_cache.shape[-1]
    b, L = slots.shape
    flat = slots.flatten()
    # index_select on the flattened pool is ~2x faster than advanced indexing on CPU.
    k = k_cache.view(-1, kvh, d).index_select(0, flat).view(b, L, kvh, d).transpose(1, 2)  # [B, KVH, L, D]
    v = v_cache.view(-1, kvh, d).index_select(0, flat).view(b, L, kvh, d).transpose(1, 2)
    h = q.shape[1]
    # GQA: the query heads of one KV head attend the same context under the same mask, so they go in
    # as that head's "query rows" [B, KVH, H/KVH, D]: each K/V row is read once per group, not per head.
    out = F.scaled_dot_product_attention(
        q.view(b, kvh, h // kvh, d), k, v, attn_mask=mask[:, None, None, :], scale=scale
    )
    return out.reshape(b, h, d)


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
    slots: torch.Tensor,
    context_start: int,
    scale: float,
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
    k = k_cache.view(-1, kvh, d).index_select(0, slots).transpose(0, 1)  # [KVH, ctx, D]
    v = v_cache.view(-1, kvh, d).index_select(0, slots).transpose(0, 1)
    bias = _causal_bias(context_start, n, str(q.device))
    qg = q.view(n, kvh, g, d).permute(1, 2, 0, 3)  # [KVH, G, n, D]
    out = torch.empty(kvh, g, n, d, dtype=q.dtype, device=q.device)
    for r0 in range(0, n, PREFILL_QUERY_TILE):
        r1 = min(r0 + PREFILL_QUERY_TILE, n)
        visible = context_start + r1  # keys past the tile's last row are masked for every row in it
        rows = r1 - r0
        scores = torch.bmm(
            qg[:, :, r0:r1].reshape(kvh, g * rows, d), k[:, :visible].transpose(1, 2)
        ).view(kvh, g, rows, visible).float()
        scores.mul_(scale).add_(bias[r0:r1, :visible])
        probs = scores.softmax(-1).to(q.dtype).view(kvh, g * rows, visible)
        out[:, :, r0:r1] = torch.bmm(probs, v[:, :visible]).view(kvh, g, rows, d)
    return out.permute(2, 0, 1, 3).reshape(n, h, d)


def prepack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """Weights in the layout the matmul reads fastest. On CPU in bf16/fp16 that is oneDNN's blocked
    layout: the same values, 1.3-1.7x faster small-batch matmuls than F.linear's per-call reorder."""
    if (
        weight.device.type == "cpu"
        and weight.dtype in (torch.bfloat16, torch.float16)
        and torch.backends.mkldnn.is_available()
    ):
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 32)
    return weight


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, in] @ weight [out, in]^T (+ bias). Reads every weight byte once: the decode bottleneck."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
