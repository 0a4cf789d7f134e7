"""The C++ CPU kernels (kernels/cpu) against the fp64-upcast torch reference, and the dispatch that picks
them for CPU float tensors and falls back to the reference for quantized KV pools."""

from __future__ import annotations

import pytest
import torch

from llmctl import kernels
from llmctl.kernels import cpu, reference
from tests.kernels.kv_testing import TOL, assert_rel_close, poisoned  # noqa: F401 (fixture)
from tests.kernels.test_paged_attention import SHAPES as DECODE_SHAPES
from tests.kernels.test_paged_attention import decode_case
from tests.kernels.test_prefill_attention import SHAPES as PREFILL_SHAPES
from tests.kernels.test_prefill_attention import prefill_case

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU kernels; the GPU runs Triton")


@pytest.fixture(scope="module", autouse=True)
def built():
    assert cpu.available(), "the C++ CPU kernels did not build (see the warning above)"


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(dtype, with_residual, poisoned):  # noqa: F811
    x = torch.randn(37, 576, dtype=dtype) * 3
    residual = torch.randn(37, 576, dtype=dtype) if with_residual else None
    weight = torch.randn(576, dtype=dtype)
    x_before = x.clone()
    out, new_residual = cpu.rms_norm(x, weight, 1e-5, residual)
    want, want_residual = reference.rms_norm(x.double(), weight.double(), 1e-5,
                                             None if residual is None else residual.double())
    assert_rel_close(out, want, TOL[dtype])
    assert_rel_close(new_residual, want_residual, TOL[dtype] / 4, "residual")
    assert torch.equal(x, x_before)  # inputs are not modified
    if residual is None:
        assert new_residual is x


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_rotary_rotates_views_of_a_fused_qkv_in_place(dtype):
    t, h, kvh, d = 11, 9, 3, 64
    qkv = torch.randn(t, (h + 2 * kvh) * d, dtype=dtype)
    q = qkv[:, : h * d].view(t, h, d)
    k = qkv[:, h * d : (h + kvh) * d].view(t, kvh, d)
    v_before = qkv[:, (h + kvh) * d :].clone()
    angles = torch.randn(t, d // 2) * 5
    emb = torch.cat([angles, angles], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    want_q, want_k = reference.rotary_embedding(q.double(), k.double(), cos.double(), sin.double())
    got_q, got_k = cpu.rotary_embedding(q, k, cos, sin)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()
    assert_rel_close(q, want_q, TOL[dtype])
    assert_rel_close(k, want_k, TOL[dtype])
    assert torch.equal(qkv[:, (h + kvh) * d :], v_before)  # v is left alone


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_silu_and_mul_matches_reference(dtype, poisoned):  # noqa: F811
    gate_up = torch.randn(13, 2 * 1536, dtype=dtype) * 4
    assert_rel_close(cpu.silu_and_mul(gate_up), reference.silu_and_mul(gate_up.double()), TOL[dtype])


# The kernels take a KV head's query heads in blocks of four rows, then one block of the 1-3 left over.
DECODE_SHAPES = {**DECODE_SHAPES, "gqa2": (16, 64, 6, 3, [3, 40, 77]), "gqa6": (32, 128, 12, 2, [64, 9])}


@pytest.mark.parametrize("shape", DECODE_SHAPES.values(), ids=DECODE_SHAPES.keys())
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_paged_decode_matches_reference(dtype, shape, poisoned):  # noqa: F811
    q, (k_cache, v_cache, _, _), _, meta = decode_case(*shape, dtype)
    scale = shape[1] ** -0.5
    want = reference.paged_attention_decode(q.double(), k_cache.double(), v_cache.double(), meta, scale)
    assert_rel_close(cpu.paged_attention_decode(q, k_cache, v_cache, meta, scale), want, TOL[dtype])


@pytest.mark.parametrize("shape", PREFILL_SHAPES.values(), ids=PREFILL_SHAPES.keys())
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_prefill_matches_reference(dtype, shape, poisoned):  # noqa: F811
    q, (k_cache, v_cache, _, _), meta = prefill_case(*shape, dtype)
    scale = shape[1] ** -0.5
    want = reference.prefill_attention(q.double(), k_cache.double(), v_cache.double(), meta, scale)
    assert_rel_close(cpu.prefill_attention(q, k_cache, v_cache, meta, scale), want, TOL[dtype])


def test_long_prefill_spans_many_tiles_and_chunks():
    q, (k_cache, v_cache, _, _), meta = prefill_case(16, 64, 9, 3, [300, 7], [0, 129], torch.bfloat16)
    want = reference.prefill_attention(q.double(), k_cache.double(), v_cache.double(), meta, 0.125)
    assert_rel_close(cpu.prefill_attention(q, k_cache, v_cache, meta, 0.125), want, TOL[torch.bfloat16])


def test_dispatch_uses_the_cpu_kernels_for_float_pools_and_the_reference_for_quantized_ones(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "paged_attention_decode", lambda *a: calls.append("cpu"))
    fresh = kernels._cpu_op("paged_attention_decode")
    q, pools, _, meta = decode_case(16, 64, 8, 2, [5, 20], torch.bfloat16)
    fresh(q, pools[0], pools[1], meta, 0.125)
    assert calls == ["cpu"]
    q, (k_cache, v_cache, k_scale, v_scale), _, meta = decode_case(16, 64, 8, 2, [5, 20], torch.int8)
    out = fresh(q, k_cache, v_cache, meta, 0.125, k_scale, v_scale)
    assert calls == ["cpu"] and out.shape == q.shape  # served by the reference
