"""Varlen causal prefill (and chunked prefill) over the paged KV pool.

Sequence i's new tokens are rows cu_seqlens_q[i]..cu_seqlens_q[i+1] of q, at positions context_starts[i]
onward; their K/V are already in the pool, so every key (cached context and new tokens alike) is read
through the block table. A program owns (query tile, KV head, sequence): its BLOCK_M rows are
(token, query head) pairs of that KV head's group, token-major, so each K/V tile is loaded once for
the whole group. Online softmax in fp32; quantized pools as in paged_attention.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmctl.kernels.metadata import PrefillMetadata
from llmctl.kernels.triton.kv_cache import check_kv_pools
from llmctl.kernels.triton.paged_attention import LOG2E, _attend, _kv_tile


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, table_ptr, cu_ptr, ctx_start_ptr, out_ptr,
    qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_tb,
    stride_cb, stride_co, stride_ch,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    QUANT: tl.constexpr, INPUT_IEEE: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(cu_ptr + seq)
    n_new = tl.load(cu_ptr + seq + 1) - q_start
    ctx_start = tl.load(ctx_start_ptr + seq)

    flat = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] (token, head-in-group) pairs
    tok = flat // G
    heads = kvh * G + flat % G
    row_mask = tok < n_new
    pos = ctx_start + tok  # each row sees keys 0..pos
    dims = tl.arange(0, BLOCK_D)
    d_mask = dims < D
    rows = (q_start + tok).to(tl.int64)
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    dot_dtype = q.dtype
    table_row = table_ptr + seq.to(tl.int64) * stride_tb
    if QUANT == 2:
        qk_scale = qk_scale * tl.load(k_scale_ptr + kvh)

    # Keys past the tile's last valid row are masked for every row in it; an empty tile loops 0 times.
    last_tok = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // G, n_new - 1)
    hi = tl.where(tile * BLOCK_M < n_new * G, ctx_start + last_tok + 1, 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = n < hi
        k, ks = _kv_tile(k_cache_ptr, k_scale_ptr, table_row, n, n_mask, kvh, dims,
                         stride_cb, stride_co, stride_ch, BLOCK_SIZE, KVH, D, QUANT, dot_dtype)  # fmt: skip
        v, vs = _kv_tile(v_cache_ptr, v_scale_ptr, table_row, n, n_mask, kvh, dims,
                         stride_cb, stride_co, stride_ch, BLOCK_SIZE, KVH, D, QUANT, dot_dtype)  # fmt: skip
        s = _attend(q, tl.trans(k), INPUT_IEEE) * (ks * qk_scale)[None, :]  # [BLOCK_M, BLOCK_N], log2 units
        # Key 0 is visible to every row, so each row's running max is finite after the first tile.
        s = tl.where(n_mask[None, :] & (n[None, :] <= pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _attend((p * vs[None, :]).to(dot_dtype), v, INPUT_IEEE)
        m_i = m_new
    if QUANT == 2:
        acc = acc * tl.load(v_scale_ptr + kvh)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l_i = 0 only in an empty tile, which stores nothing
    tl.store(
        out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: PrefillMetadata,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [T, H, D] -> [T, H, D]; same contract as reference.prefill_attention."""
    quant = check_kv_pools(k_cache, v_cache, k_scale, v_scale)
    num_blocks, block_size, kvh, d = k_cache.shape
    if q.dim() != 3 or q.shape[2] != d or q.shape[1] % kvh:
        raise ValueError(f"q must be [T, H, {d}] with H a multiple of {kvh} KV heads, got {tuple(q.shape)}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or q.stride(-1) != 1:
        raise ValueError(f"q must be fp32/fp16/bf16 and contiguous in the head dim, got {q.dtype}")
    n = meta.num_seqs
    cu, starts, tables = meta.cu_seqlens_q, meta.context_starts, meta.block_tables
    if cu.shape != (n + 1,) or cu.dtype != torch.int32 or not cu.is_contiguous():
        raise ValueError(f"meta.cu_seqlens_q must be contiguous int32 [{n + 1}]")
    if starts.shape != (n,) or starts.dtype != torch.int32 or not starts.is_contiguous():
        raise ValueError(f"meta.context_starts must be contiguous int32 [{n}]")
    if tables.dim() != 2 or tables.shape[0] != n or tables.dtype != torch.int32 or tables.stride(1) != 1:
        raise ValueError(f"meta.block_tables must be int32 [{n}, max_blocks] row-contiguous")
    if meta.block_size != block_size:
        raise ValueError(f"meta.block_size {meta.block_size} != the pool's block size {block_size}")
    out = torch.empty_like(q)
    if n == 0 or q.shape[0] == 0:
        return out
    g = q.shape[1] // kvh
    block_d = triton.next_power_of_2(d)
    block_m = 64
    block_n = 64 if block_d <= 64 else 32
    ks = k_scale if k_scale is not None else k_cache
    vs = v_scale if v_scale is not None else v_cache
    grid = (triton.cdiv(meta.max_query_len * g, block_m), kvh, n)
    _prefill_kernel[grid](
        q, k_cache, v_cache, ks, vs, tables, cu, starts, out,
        scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        G=g, KVH=kvh, D=d, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_N=block_n,
        QUANT=quant, INPUT_IEEE=q.dtype == torch.float32,
        num_warps=4,
    )  # fmt: skip
    return out
