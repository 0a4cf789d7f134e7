"""Triton paged decode attention (plain and split-K) against the fp64-upcast reference, over ragged
contexts, block boundaries, GQA ratios and every KV pool dtype."""

from __future__ import annotations

import pytest
import torch

from llmctl.kernels import reference
from llmctl.kernels.metadata import DecodeMetadata
from llmctl.kernels.triton.kv_cache import write_kv
from llmctl.kernels.triton.paged_attention import choose_num_splits, paged_attention_decode
from tests.kernels.kv_testing import (
    KV_DTYPES,
    TOL,
    assert_rel_close,
    dequantized,
    kv_pool,
    poisoned,  # noqa: F401 (fixture)
    query_dtype,
    rel_err,
)

# block_size, head_dim, H, KVH, context lengths: ends on a block boundary, one token, mid-block.
SHAPES = {
    "typical": (16, 64, 8, 2, [1, 16, 17, 45]),
    "odd": (32, 128, 9, 3, [33, 64, 5, 97]),
    "mha": (16, 64, 4, 4, [31, 48]),
    "gqa8": (32, 64, 8, 1, [70, 2, 32]),
}


def decode_case(block_size, d, h, kvh, ctx, dtype, extra_blocks=3):
    """A pool, shuffled block tables (padded with 0) and queries for the given context lengths."""
    ctx = torch.tensor(ctx)
    blocks = (-(-ctx // block_size)).tolist()
    num_blocks = sum(blocks) + extra_blocks
    k_cache, v_cache, k_scale, v_scale, kf, vf = kv_pool(num_blocks, block_size, kvh, d, dtype)
    perm = torch.randperm(num_blocks)
    tables = torch.zeros(len(blocks), max(blocks), dtype=torch.int32)
    used = 0
    for i, nb in enumerate(blocks):
        tables[i, :nb] = perm[used : used + nb]
        used += nb
    meta = DecodeMetadata(tables, ctx.int(), block_size, int(ctx.max()))
    q = torch.randn(len(blocks), h, d, dtype=query_dtype(dtype))
    return q, (k_cache, v_cache, k_scale, v_scale), (kf, vf), meta


def fp64_reference(q, pools, meta, scale):
    k_cache, v_cache, k_scale, v_scale = pools
    kd, vd = dequantized(k_cache, k_scale), dequantized(v_cache, v_scale)
    return reference.paged_attention_decode(q.double(), kd, vd, meta, scale)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", KV_DTYPES, ids=str)
def test_paged_decode_matches_fp64_reference(dtype, shape, poisoned):  # noqa: F811
    q, pools, _, meta = decode_case(*shape, dtype)
    scale = shape[1] ** -0.5
    want = fp64_reference(q, pools, meta, scale)
    tol = TOL[q.dtype]
    assert_rel_close(paged_attention_decode(q, *pools[:2], meta, scale, *pools[2:], num_splits=1), want, tol)
    # The reference's own quantized path (dequantize on gather) holds to the same bound.
    assert_rel_close(reference.paged_attention_decode(q, *pools[:2], meta, scale, *pools[2:]), want, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.float8_e4m3fn], ids=str)
def test_split_k_equals_the_unsplit_kernel(dtype, poisoned):  # noqa: F811
    # One long context and one short one: later splits of the short sequence are empty.
    q, pools, _, meta = decode_case(16, 64, 4, 2, [300, 7], dtype)
    scale = 64**-0.5
    whole = paged_attention_decode(q, *pools[:2], meta, scale, *pools[2:], num_splits=1)
    want = fp64_reference(q, pools, meta, scale)
    for splits in (2, 5):
        split = paged_attention_decode(q, *pools[:2], meta, scale, *pools[2:], num_splits=splits)
        assert_rel_close(split, want, TOL[q.dtype], f"{splits} splits")
        assert rel_err(split, whole.double()) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_split_k_is_chosen_for_few_long_sequences_only():
    cpu = torch.device("cpu")
    assert choose_num_splits(1, 2, 8192, cpu) > 1
    assert choose_num_splits(256, 8, 8192, cpu) == 1
    assert choose_num_splits(1, 2, 100, cpu) == 1


@pytest.mark.parametrize("dtype,tol", [(torch.int8, 3e-2), (torch.float8_e4m3fn, 8e-2)], ids=str)
def test_quantize_then_attend_stays_close_to_unquantized_attention(dtype, tol):
    # Write fp32 K/V through the quantizing kernel, attend, and compare with attention on the originals.
    q, (k_cache, v_cache, k_scale, v_scale), _, meta = decode_case(16, 64, 8, 2, [40, 77], dtype)
    kvh, d = 2, 64
    kf = torch.randn(k_cache.shape[0] * 16, kvh, d) * 2
    vf = torch.randn_like(kf)
    write_kv(kf, vf, k_cache, v_cache, torch.arange(kf.shape[0]), k_scale, v_scale)
    q = q.float()
    out = paged_attention_decode(q, k_cache, v_cache, meta, d**-0.5, k_scale, v_scale)
    exact = reference.paged_attention_decode(
        q.double(), kf.view(k_cache.shape).double(), vf.view(v_cache.shape).double(), meta, d**-0.5
    )
    assert rel_err(out, exact) < tol


def test_paged_decode_rejects_bad_arguments():
    q, (k_cache, v_cache, k_scale, v_scale), _, meta = decode_case(16, 64, 4, 2, [5], torch.int8)
    with pytest.raises(ValueError, match="k_scale"):
        paged_attention_decode(q, k_cache, v_cache, meta, 0.1)
    with pytest.raises(ValueError, match="q must be"):
        paged_attention_decode(q[:, :3], k_cache, v_cache, meta, 0.1, k_scale, v_scale)
    with pytest.raises(ValueError, match="num_splits"):
        paged_attention_decode(q, k_cache, v_cache, meta, 0.1, k_scale, v_scale, num_splits=0)
