"""Triton varlen causal prefill against the fp64-upcast reference: ragged batches with cached context
(chunked prefill), block boundaries, GQA ratios and every KV pool dtype."""

from __future__ import annotations

import pytest
import torch

from llmctl.kernels import reference
from llmctl.kernels.metadata import PrefillMetadata
from llmctl.kernels.triton.prefill_attention import prefill_attention
from tests.kernels.kv_testing import (
    KV_DTYPES,
    TOL,
    assert_rel_close,
    dequantized,
    kv_pool,
    poisoned,  # noqa: F401 (fixture)
    query_dtype,
)

# block_size, head_dim, H, KVH, new tokens per sequence, cached tokens before them.
SHAPES = {
    "typical": (16, 64, 8, 2, [5, 17, 1], [0, 16, 33]),
    "odd": (32, 128, 9, 3, [40, 3], [7, 64]),
    "mha": (16, 64, 4, 4, [23], [9]),
    "gqa8": (32, 64, 8, 1, [12, 30], [0, 50]),
}


def prefill_case(block_size, d, h, kvh, query_lens, starts, dtype, extra_blocks=2):
    """A pool, shuffled block tables (padded with 0) and the new tokens' queries, back to back."""
    totals = [n + s for n, s in zip(query_lens, starts, strict=True)]
    blocks = [-(-t // block_size) for t in totals]
    num_blocks = sum(blocks) + extra_blocks
    k_cache, v_cache, k_scale, v_scale, _, _ = kv_pool(num_blocks, block_size, kvh, d, dtype)
    perm = torch.randperm(num_blocks)
    tables = torch.zeros(len(blocks), max(blocks), dtype=torch.int32)
    used = 0
    for i, nb in enumerate(blocks):
        tables[i, :nb] = perm[used : used + nb]
        used += nb
    cu = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    meta = PrefillMetadata(
        cu_seqlens_q=cu,
        context_starts=torch.tensor(starts, dtype=torch.int32),
        block_tables=tables,
        block_size=block_size,
        query_lens=list(query_lens),
        starts=list(starts),
        max_query_len=max(query_lens),
    )
    q = torch.randn(sum(query_lens), h, d, dtype=query_dtype(dtype))
    return q, (k_cache, v_cache, k_scale, v_scale), meta


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", KV_DTYPES, ids=str)
def test_prefill_matches_fp64_reference(dtype, shape, poisoned):  # noqa: F811
    q, pools, meta = prefill_case(*shape, dtype)
    scale = shape[1] ** -0.5
    k_cache, v_cache, k_scale, v_scale = pools
    kd, vd = dequantized(k_cache, k_scale), dequantized(v_cache, v_scale)
    want = reference.prefill_attention(q.double(), kd, vd, meta, scale)
    tol = TOL[q.dtype]
    assert_rel_close(prefill_attention(q, *pools[:2], meta, scale, *pools[2:]), want, tol)
    # The reference's own quantized path (dequantize on gather) holds to the same bound.
    assert_rel_close(reference.prefill_attention(q, *pools[:2], meta, scale, *pools[2:]), want, tol)


def test_prefill_rejects_bad_arguments():
    q, (k_cache, v_cache, k_scale, v_scale), meta = prefill_case(16, 64, 4, 2, [5], [3], torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="v_scale"):
        prefill_attention(q, k_cache, v_cache, meta, 0.1, k_scale, None)
    with pytest.raises(ValueError, match="q must be"):
        prefill_attention(q[..., :32], k_cache, v_cache, meta, 0.1, k_scale, v_scale)
