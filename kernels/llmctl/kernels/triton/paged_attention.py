"""Paged decode attention: one query token per sequence over its block table, with a split-K
(flash-decoding) variant for long contexts and few sequences.

A program owns one (sequence, KV head[, context split]) and the G = H/KVH query heads sharing that KV
head as the rows of a [BLOCK_G, D] tile, so each K/V block is read once per group. Quantized pools
(int8 per-(token, head) scales, fp8 per-head scales) are read as raw codes: the K scale multiplies the
scores and the V scale the probabilities, both in fp32, which equals dequantizing K/V first.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from llmctl.kernels.metadata import DecodeMetadata
from llmctl.kernels.triton.kv_cache import check_kv_pools

LOG2E = 1.4426950408889634


@triton.jit
def _kv_tile(
    cache_ptr, scale_ptr, table_row_ptr, n, n_mask, kvh, dims,
    stride_cb, stride_co, stride_ch,
    BLOCK_SIZE: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, QUANT: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """Context positions n [BLOCK_N] of one KV head -> (codes [BLOCK_N, BLOCK_D] in DOT_DTYPE, per-position
    scale [BLOCK_N] fp32 (1 unless int8))."""
    blk = tl.load(table_row_ptr + n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
    off = n % BLOCK_SIZE
    rows = blk * stride_cb + off * stride_co + kvh * stride_ch  # [BLOCK_N]
    x = tl.load(
        cache_ptr + rows[:, None] + dims[None, :], mask=n_mask[:, None] & (dims[None, :] < D), other=0.0
    )
    if QUANT == 1:
        s = tl.load(scale_ptr + (blk * BLOCK_SIZE + off) * KVH + kvh, mask=n_mask, other=0.0)
    else:
        s = tl.full(n.shape, 1.0, tl.float32)
    if QUANT != 0:
        # int8 and e4m3 codes are exact in fp32 and in every DOT_DTYPE.
        x = x.to(tl.float32)
    return x.to(DOT_DTYPE), s


@triton.jit
def _attend(q, k, INPUT_IEEE: tl.constexpr):
    if INPUT_IEEE:
        return tl.dot(q, k, input_precision="ieee")
    return tl.dot(q, k)


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, table_ptr, ctx_ptr,
    out_ptr, m_ptr, l_ptr, acc_ptr,
    qk_scale,
    stride_qb, stride_qh, stride_ob, stride_oh, stride_tb,
    stride_cb, stride_co, stride_ch,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPLIT_LEN: tl.constexpr,
    QUANT: tl.constexpr, INPUT_IEEE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(ctx_ptr + b)
    lo = split * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, ctx_len)

    g = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, BLOCK_D)
    heads = kvh * G + g
    g_mask = g < G
    d_mask = dims < D
    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + dims[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_G, BLOCK_D]
    dot_dtype = q.dtype
    table_row = table_ptr + b.to(tl.int64) * stride_tb

    # fp8 per-head scales are per program: fold K's into the score scale, V's into the output.
    if QUANT == 2:
        qk_scale = qk_scale * tl.load(k_scale_ptr + kvh)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = n < hi
        k, ks = _kv_tile(k_cache_ptr, k_scale_ptr, table_row, n, n_mask, kvh, dims,
                         stride_cb, stride_co, stride_ch, BLOCK_SIZE, KVH, D, QUANT, dot_dtype)  # fmt: skip
        v, vs = _kv_tile(v_cache_ptr, v_scale_ptr, table_row, n, n_mask, kvh, dims,
                         stride_cb, stride_co, stride_ch, BLOCK_SIZE, KVH, D, QUANT, dot_dtype)  # fmt: skip
        # s: [BLOCK_G, BLOCK_N] in log2 units (qk_scale carries log2(e)).
        s = _attend(q, tl.trans(k), INPUT_IEEE) * (ks * qk_scale)[None, :]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        pv = (p * vs[None, :]).to(dot_dtype)
        acc = acc * alpha[:, None] + _attend(pv, v, INPUT_IEEE)
        m_i = m_new
    if QUANT == 2:
        acc = acc * tl.load(v_scale_ptr + kvh)

    if NUM_SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + b * stride_ob + heads[:, None] * stride_oh + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=g_mask[:, None] & d_mask[None, :],
        )
    else:
        # Partials [B, H, NUM_SPLITS(, D)], contiguous: an empty split leaves m=-inf, l=0, acc=0.
        row = (b * (KVH * G) + heads) * NUM_SPLITS + split  # [BLOCK_G]
        tl.store(m_ptr + row, m_i, mask=g_mask)
        tl.store(l_ptr + row, l_i, mask=g_mask)
        tl.store(acc_ptr + row[:, None] * BLOCK_D + dims[None, :], acc, mask=g_mask[:, None])


@triton.jit
def _split_reduce_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, stride_ob, stride_oh,
    H: tl.constexpr, D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, BLOCK_D)
    row = (b * H + h) * NUM_SPLITS + sp
    s_mask = sp < NUM_SPLITS
    m = tl.load(m_ptr + row, mask=s_mask, other=float("-inf"))
    l = tl.load(l_ptr + row, mask=s_mask, other=0.0)  # noqa: E741
    acc = tl.load(acc_ptr + row[:, None] * BLOCK_D + dims[None, :], mask=s_mask[:, None], other=0.0)
    # Split 0 always holds the first context token, so m_max is finite and empty splits weigh 0.
    m_max = tl.max(m, axis=0)
    w = tl.exp2(m - m_max)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + dims, out.to(out_ptr.dtype.element_ty), mask=dims < D)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(num_seqs: int, kv_heads: int, max_context_len: int, device: torch.device) -> int:
    """Split the context when (sequence, KV head) programs alone would leave most SMs idle: aim for
    ~2 programs per SM, each split covering at least 256 tokens."""
    programs = num_seqs * kv_heads
    target = 2 * (_num_sms(device.index or 0) if device.type == "cuda" else 64)
    if programs >= target or max_context_len < 512:
        return 1
    return max(1, min(triton.cdiv(target, programs), max_context_len // 256, 64))


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: DecodeMetadata,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q [B, H, D] -> [B, H, D]; same contract as reference.paged_attention_decode. num_splits
    overrides the split-K choice (1 = no split)."""
    quant = check_kv_pools(k_cache, v_cache, k_scale, v_scale)
    num_blocks, block_size, kvh, d = k_cache.shape
    if q.dim() != 3 or q.shape[2] != d or q.shape[1] % kvh:
        raise ValueError(f"q must be [B, H, {d}] with H a multiple of {kvh} KV heads, got {tuple(q.shape)}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or q.stride(-1) != 1:
        raise ValueError(f"q must be fp32/fp16/bf16 and contiguous in the head dim, got {q.dtype}")
    b, h = q.shape[0], q.shape[1]
    tables, ctx = meta.block_tables, meta.context_lens
    if tables.dim() != 2 or tables.shape[0] != b or tables.dtype != torch.int32 or tables.stride(1) != 1:
        raise ValueError(f"meta.block_tables must be int32 [{b}, max_blocks] row-contiguous")
    if ctx.shape != (b,) or ctx.dtype != torch.int32 or not ctx.is_contiguous():
        raise ValueError(f"meta.context_lens must be contiguous int32 [{b}]")
    if meta.block_size != block_size:
        raise ValueError(f"meta.block_size {meta.block_size} != the pool's block size {block_size}")
    out = torch.empty_like(q)
    if b == 0:
        return out
    max_ctx = max(int(meta.max_context_len), 1)
    if num_splits is None:
        num_splits = choose_num_splits(b, kvh, max_ctx, q.device)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")

    g = h // kvh
    block_d = triton.next_power_of_2(d)
    block_n = 64 if block_d <= 64 else 32
    # tl.dot needs at least 16 rows; padded query rows are zeros and never stored.
    block_g = max(16, triton.next_power_of_2(g))
    split_len = triton.cdiv(triton.cdiv(max_ctx, num_splits), block_n) * block_n
    num_splits = triton.cdiv(max_ctx, split_len)
    if num_splits > 1:
        m = torch.empty(b, h, num_splits, dtype=torch.float32, device=q.device)
        lse = torch.empty_like(m)
        acc = torch.empty(b, h, num_splits, block_d, dtype=torch.float32, device=q.device)
    else:
        m = lse = acc = out  # unused
    ks = k_scale if k_scale is not None else k_cache
    vs = v_scale if v_scale is not None else v_cache
    _paged_decode_kernel[(b, kvh, num_splits)](
        q, k_cache, v_cache, ks, vs, tables, ctx, out, m, lse, acc,
        scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        G=g, KVH=kvh, D=d, BLOCK_SIZE=block_size,
        BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_N=block_n,
        NUM_SPLITS=num_splits, SPLIT_LEN=split_len,
        QUANT=quant, INPUT_IEEE=q.dtype == torch.float32,
        num_warps=4,
    )  # fmt: skip
    if num_splits > 1:
        _split_reduce_kernel[(b, h)](
            m, lse, acc, out, out.stride(0), out.stride(1),
            H=h, D=d, NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d,
            num_warps=4,
        )  # fmt: skip
    return out
