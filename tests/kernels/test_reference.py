"""The torch reference ops against plain fp64 math, on ragged shapes and block boundaries."""

from __future__ import annotations

import pytest
import torch

from llmctl.kernels import reference
from llmctl.kernels.metadata import DecodeMetadata, PrefillMetadata


def fp64_attention(q, k, v, context_start, scale):
    """q [n, H, D], k/v [ctx, KVH, D]: causal attention with query i at position context_start + i."""
    n, h, _ = q.shape
    g = h // k.shape[1]
    k = k.double().repeat_interleave(g, dim=1)
    v = v.double().repeat_interleave(g, dim=1)
    scores = torch.einsum("nhd,chd->hnc", q.double(), k) * scale
    pos = torch.arange(context_start, context_start + n)[:, None]
    scores = scores.masked_fill(torch.arange(k.shape[0])[None, :] > pos, float("-inf"))
    return torch.einsum("hnc,chd->nhd", scores.softmax(-1), v)


def pool(num_blocks, block_size, kvh, d, dtype):
    k = torch.randn(num_blocks, block_size, kvh, d, dtype=dtype)
    v = torch.randn(num_blocks, block_size, kvh, d, dtype=dtype)
    return k, v


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("context_start,n,heads,kv_heads", [(0, 37, 4, 4), (48, 17, 9, 3), (5, 700, 8, 1)])
def test_prefill_attention_matches_fp64_causal_attention(dtype, tol, context_start, n, heads, kv_heads):
    # 700 new tokens cross the 512-row query tile; 48 cached tokens end on a block boundary; 5 do not.
    bs, d = 16, 32
    ctx = context_start + n
    num_blocks = -(-ctx // bs) + 3
    k_cache, v_cache = pool(num_blocks, bs, kv_heads, d, dtype)
    table = torch.randperm(num_blocks)[: -(-ctx // bs)]
    slots = (table[:, None] * bs + torch.arange(bs)).flatten()[:ctx]
    q = torch.randn(n, heads, d, dtype=dtype)
    meta = PrefillMetadata(
        cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32),
        context_starts=torch.tensor([context_start], dtype=torch.int32),
        block_tables=table[None].int(),
        block_size=bs,
        query_lens=[n],
        starts=[context_start],
        max_query_len=n,
    )
    out = reference.prefill_attention(q, k_cache, v_cache, meta, d**-0.5)
    kf, vf = k_cache.view(-1, kv_heads, d)[slots], v_cache.view(-1, kv_heads, d)[slots]
    assert rel_err(out, fp64_attention(q, kf, vf, context_start, d**-0.5)) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_paged_decode_attention_matches_fp64_over_ragged_contexts(dtype, tol):
    bs, d, heads, kv_heads = 16, 64, 8, 2
    ctx = torch.tensor([1, 16, 17, 45])
    num_blocks = 20
    k_cache, v_cache = pool(num_blocks, bs, kv_heads, d, dtype)
    width = int(-(-ctx.max() // bs) * bs)
    tables = torch.randperm(num_blocks)[: len(ctx) * (width // bs)].view(len(ctx), -1)
    pos = torch.arange(width)
    slots = tables[:, pos // bs] * bs + pos % bs
    meta = DecodeMetadata(tables.int(), ctx.int(), bs, int(ctx.max()))
    q = torch.randn(len(ctx), heads, d, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    out[:] = reference.paged_attention_decode(q, k_cache, v_cache, meta, d**-0.5)
    for b, c in enumerate(ctx.tolist()):
        kf = k_cache.view(-1, kv_heads, d)[slots[b, :c]]
        vf = v_cache.view(-1, kv_heads, d)[slots[b, :c]]
        ref = fp64_attention(q[b : b + 1], kf, vf, c - 1, d**-0.5)
        assert rel_err(out[b : b + 1], ref) < tol


def test_write_kv_scatters_into_the_named_slots_only():
    k_cache, v_cache = pool(4, 8, 2, 4, torch.float32)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    slots = torch.tensor([3, 17, 30])
    k, v = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    reference.write_kv(k, v, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, 2, 4), v_cache.view(-1, 2, 4)
    assert torch.equal(flat_k[slots], k) and torch.equal(flat_v[slots], v)
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(flat_k[untouched], before_k.view(-1, 2, 4)[untouched])
    assert torch.equal(flat_v[untouched], before_v.view(-1, 2, 4)[untouched])


def test_rms_norm_with_residual_returns_the_sum_as_the_new_residual():
    x, r, w = torch.randn(5, 64), torch.randn(5, 64), torch.randn(64)
    out, residual = reference.rms_norm(x, w, 1e-6, r)
    s = (x + r).double()
    ref = w.double() * s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(residual, x + r)
    assert rel_err(out, ref) < 1e-6
