"""The Triton RMSNorm and rotary kernels against fp64 math and the torch reference.

Without a GPU the kernels run under the Triton interpreter on CPU tensors, so shapes stay small.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

from llmctl.kernels import reference  # noqa: E402
from llmctl.kernels.triton import norm_rope  # noqa: E402
from tests.kernels.closeness import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)]


def assert_same_rounding(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Bit-equal, except that the Triton interpreter truncates fp32 -> bf16 (GPUs round to nearest even),
    so there a bf16 result may sit one ulp (2^-7 relative) toward zero."""
    if out.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        assert ((out.float() - ref.float()).abs() <= ref.float().abs() * 2**-7).all()
    else:
        assert torch.equal(out, ref)


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Every tensor the wrappers allocate starts as NaN, so an element the kernel never writes fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


def fp64_rms_norm(x, weight, eps, residual=None):
    h = x.double() + (residual.double() if residual is not None else 0)
    return weight.double() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps), h


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("tokens,hidden", [(16, 576), (7, 1024), (3, 100), (1, 4097)])
def test_rms_norm_matches_fp64(poisoned_empty, dtype, tol, with_residual, tokens, hidden):
    # 576 (SmolLM2) and 100 are not powers of two; 4097 is one past a block boundary.
    x = torch.randn(tokens, hidden, dtype=dtype, device=DEVICE) * 3
    residual = torch.randn_like(x) if with_residual else None
    weight = (1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype)
    x0, r0 = x.clone(), residual.clone() if with_residual else None
    out, new_residual = norm_rope.rms_norm(x, weight, 1e-5, residual)
    ref_out, ref_res = fp64_rms_norm(x, weight, 1e-5, residual)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, ref_out, tol, "out")
    if with_residual:
        assert new_residual.dtype == dtype and new_residual.shape == x.shape
        assert_close(new_residual, ref_res, tol, "new_residual")
        # The sum is rounded to the input dtype once, like the reference's `x + residual`.
        assert_same_rounding(new_residual, x + residual)
        assert torch.equal(residual, r0)
    else:
        assert new_residual is x
    assert torch.equal(x, x0)


@pytest.mark.parametrize("dtype,tol", DTYPES[:2])
def test_rms_norm_agrees_with_reference_on_strided_rows_and_leading_dims(poisoned_empty, dtype, tol):
    # x is every other row of a wider buffer, viewed with two leading dims; the weight is fp32 while x
    # is not, so the output dtype follows the reference's promotion.
    hidden = 576
    wide = torch.randn(2, 10, 2 * hidden, dtype=dtype, device=DEVICE)
    x = wide[..., :hidden]
    residual = torch.randn(2, 10, hidden, dtype=dtype, device=DEVICE)
    weight = 1 + 0.1 * torch.randn(hidden, device=DEVICE)
    out, new_residual = norm_rope.rms_norm(x, weight, 1e-6, residual)
    ref_out, ref_res = reference.rms_norm(x, weight, 1e-6, residual)
    assert out.dtype == ref_out.dtype and out.shape == ref_out.shape
    assert_close(out, ref_out.double(), tol, "out")
    assert_same_rounding(new_residual, ref_res)


def test_rms_norm_rejects_mismatched_arguments():
    x = torch.randn(4, 64, device=DEVICE)
    with pytest.raises(ValueError, match="weight"):
        norm_rope.rms_norm(x, torch.ones(32, device=DEVICE), 1e-5)
    with pytest.raises(ValueError, match="residual"):
        norm_rope.rms_norm(x, torch.ones(64, device=DEVICE), 1e-5, torch.randn(4, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="x must"):
        norm_rope.rms_norm(x.long(), torch.ones(64, device=DEVICE), 1e-5)


def rope_cos_sin(positions, head_dim, dtype, theta=10000.0):
    """cat(freqs, freqs) like the engine: both halves of cos/sin equal."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = positions.double()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype).to(DEVICE), emb.sin().to(dtype).to(DEVICE)


def fp64_rope(x, cos, sin):
    x, cos, sin = x.double(), cos.double()[:, None], sin.double()[:, None]
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def fused_qkv(tokens, heads, kv_heads, head_dim, dtype):
    """q, k, v as the engine makes them: strided views of one [T, (H + 2 KVH) * D] projection output."""
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=DEVICE)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return qkv, q.view(tokens, heads, head_dim), k.view(tokens, kv_heads, head_dim), v


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize(
    "tokens,heads,kv_heads,head_dim",
    [(9, 9, 3, 64), (5, 4, 4, 128), (3, 80, 8, 128), (4, 3, 1, 80)],
)
def test_rotary_embedding_rotates_fused_qkv_views_in_place(dtype, tol, tokens, heads, kv_heads, head_dim):
    # 9/3 heads: SmolLM2's GQA; 80 heads split into two head tiles; head dim 80 has a non-power-of-2 half.
    qkv, q, k, v = fused_qkv(tokens, heads, kv_heads, head_dim, dtype)
    assert not q.is_contiguous()
    positions = torch.randint(0, 4096, (tokens,))
    cos, sin = rope_cos_sin(positions, head_dim, dtype)
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    q_out, k_out = norm_rope.rotary_embedding(q, k, cos, sin)
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()
    assert q_out.shape == q0.shape and k_out.shape == k0.shape
    assert_close(q_out, fp64_rope(q0, cos, sin), tol, "q")
    assert_close(k_out, fp64_rope(k0, cos, sin), tol, "k")
    assert torch.equal(v, v0)  # nothing written past k's slice
    ref_q, ref_k = reference.rotary_embedding(q0, k0, cos, sin)
    assert_close(q_out, ref_q.double(), 2 * tol, "q vs reference")
    assert_close(k_out, ref_k.double(), 2 * tol, "k vs reference")


@pytest.mark.parametrize("dtype,tol", DTYPES[:2])
def test_rotary_embedding_uses_both_halves_of_cos_sin(dtype, tol):
    # Arbitrary cos/sin (halves differ) on contiguous q/k: the kernel follows the reference formula
    # exactly, not just the cat(freqs, freqs) special case.
    tokens, heads, kv_heads, head_dim = 6, 4, 2, 64
    q = torch.randn(tokens, heads, head_dim, dtype=dtype, device=DEVICE)
    k = torch.randn(tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    cos = torch.randn(tokens, head_dim, dtype=dtype, device=DEVICE)
    sin = torch.randn(tokens, head_dim, dtype=dtype, device=DEVICE)
    q0, k0 = q.clone(), k.clone()
    q_out, k_out = norm_rope.rotary_embedding(q, k, cos, sin)
    assert_close(q_out, fp64_rope(q0, cos, sin), tol, "q")
    assert_close(k_out, fp64_rope(k0, cos, sin), tol, "k")


def test_rotary_embedding_rejects_mismatched_arguments():
    q = torch.randn(3, 4, 64, device=DEVICE)
    k = torch.randn(3, 2, 64, device=DEVICE)
    cos = sin = torch.randn(3, 64, device=DEVICE)
    with pytest.raises(ValueError, match="k must"):
        norm_rope.rotary_embedding(q, k[:, :, :32], cos, sin)
    with pytest.raises(ValueError, match="cos must"):
        norm_rope.rotary_embedding(q, k, cos[:2], sin)
    with pytest.raises(ValueError, match="even"):
        norm_rope.rotary_embedding(q[..., :63], k[..., :63], cos[:, :63], sin[:, :63])
