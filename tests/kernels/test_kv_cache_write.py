"""Triton write_kv against reference.write_kv: plain scatter, int8 absmax quantization, fp8 per-head."""

from __future__ import annotations

import pytest
import torch

from llmctl.kernels import reference
from llmctl.kernels.triton.kv_cache import write_kv
from tests.kernels.kv_testing import KV_DTYPES, QUANTIZED, kv_pool, query_dtype

SHAPES = [(6, 16, 2, 64, 20), (5, 32, 3, 128, 37)]  # num_blocks, block_size, KVH, D, new tokens


def pools_and_new_tokens(num_blocks, block_size, kvh, d, t, dtype):
    k_cache, v_cache, k_scale, v_scale, _, _ = kv_pool(num_blocks, block_size, kvh, d, dtype)
    src = query_dtype(dtype)
    k = torch.randn(t, kvh, d, dtype=src) * 3
    v = torch.randn(t, kvh, d, dtype=src)
    slots = torch.randperm(num_blocks * block_size)[:t]  # crosses blocks in random order
    return (k_cache, v_cache, k_scale, v_scale), k, v, slots


def clone(x):
    return None if x is None else x.clone()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", KV_DTYPES, ids=str)
def test_write_kv_matches_reference_and_leaves_other_slots(dtype, shape):
    num_blocks, block_size, kvh, d, t = shape
    pools, k, v, slots = pools_and_new_tokens(*shape, dtype)
    mine = [clone(x) for x in pools]
    ref = [clone(x) for x in pools]
    write_kv(k, v, mine[0], mine[1], slots, mine[2], mine[3])
    if dtype in QUANTIZED:
        reference.write_kv(k, v, ref[0], ref[1], slots, ref[2], ref[3])
    else:  # the reference copies without casting; the kernel casts on store
        reference.write_kv(k.to(dtype), v.to(dtype), ref[0], ref[1], slots)
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots] = False
    for got, want, before in zip(mine[:2], ref[:2], pools[:2], strict=True):
        got, want, before = (x.view(-1, kvh, d).float() for x in (got, want, before))
        if dtype == torch.int8:
            # Compiled division may differ from torch's by an ulp, moving a code across a .5 boundary.
            assert (got[slots] - want[slots]).abs().max() <= 1
        else:
            assert torch.equal(got[slots], want[slots])
        assert torch.equal(got[untouched], before[untouched])
    if dtype == torch.int8:
        for got, want, before in zip(mine[2:], ref[2:], pools[2:], strict=True):
            got, want, before = (x.view(-1, kvh) for x in (got, want, before))
            torch.testing.assert_close(got[slots], want[slots], rtol=1e-6, atol=0)
            assert torch.equal(got[untouched], before[untouched])


@pytest.mark.parametrize("dtype,tol", [(torch.int8, 1e-2), (torch.float8_e4m3fn, 4e-2)], ids=str)
def test_quantized_write_round_trips_close_to_the_input(dtype, tol):
    (k_cache, v_cache, k_scale, v_scale), k, v, slots = pools_and_new_tokens(6, 16, 2, 64, 30, dtype)
    write_kv(k, v, k_cache, v_cache, slots, k_scale, v_scale)
    for x, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        if scale.dim() > 1:
            scale = scale.view(-1, 2)[slots]
        back = reference.dequantize_kv(cache.view(-1, 2, 64)[slots], scale)
        err = ((back.double() - x.double()).norm() / x.double().norm()).item()
        assert err < tol, err


def test_fp8_write_clamps_to_the_e4m3_range_and_int8_zero_rows_get_zero_scale():
    k_cache, v_cache, k_scale, v_scale, _, _ = kv_pool(2, 16, 2, 64, torch.float8_e4m3fn)
    k = torch.randn(3, 2, 64) * 1e6  # far past 448 * scale
    write_kv(k, k.clone(), k_cache, v_cache, torch.tensor([0, 5, 31]), k_scale, v_scale)
    written = k_cache.view(-1, 2, 64)[[0, 5, 31]].float()
    assert torch.isfinite(written).all() and written.abs().max() == 448.0

    k_cache, v_cache, k_scale, v_scale, _, _ = kv_pool(2, 16, 2, 64, torch.int8)
    k = torch.randn(2, 2, 64)
    k[1, 0] = 0.0
    write_kv(k, k.clone(), k_cache, v_cache, torch.tensor([3, 20]), k_scale, v_scale)
    assert k_scale.view(-1, 2)[20, 0] == 0 and (k_cache.view(-1, 2, 64)[20, 0] == 0).all()
    assert k_cache.view(-1, 2, 64)[3].abs().amax(-1).eq(127).all()


def test_write_kv_rejects_missing_scales_and_mismatched_shapes():
    k_cache, v_cache, _, _, _, _ = kv_pool(2, 16, 2, 64, torch.int8)
    k = torch.randn(2, 2, 64)
    with pytest.raises(ValueError, match="k_scale"):
        write_kv(k, k, k_cache, v_cache, torch.tensor([0, 1]))
    f_cache, g_cache, _, _, _, _ = kv_pool(2, 16, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="k must be"):
        write_kv(torch.randn(2, 3, 64), k, f_cache, g_cache, torch.tensor([0, 1]))
