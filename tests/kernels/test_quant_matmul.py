"""W8A16 and W4A16 (AutoAWQ GEMM layout) linears: the packing bit for bit, the torch references and both
Triton paths (GEMM, split-K) against fp64 math, on SmolLM2 widths (576, 1536) that are not multiples of
128. Triton runs under the interpreter when there is no GPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from llmctl.kernels import quant_reference as ref  # noqa: E402
from llmctl.kernels.triton import quant_matmul as tq  # noqa: E402
from tests.kernels.closeness import assert_close as assert_rel_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def random_awq(k: int, n: int, group: int, dtype: torch.dtype):
    """Random 4-bit weights and zero points with small positive scales, packed; also the fp64 weight."""
    intweight = torch.randint(0, 16, (k, n))
    zeros = torch.randint(0, 16, (k // group, n))
    scales = (torch.rand(k // group, n) * 0.02 + 0.002).to(dtype)
    qweight, qzeros = ref.pack_awq(intweight, zeros)
    w64 = (intweight - zeros.repeat_interleave(group, 0)).double() * scales.double().repeat_interleave(
        group, 0
    )
    return qweight, qzeros, scales, w64


# ---------------------------------------------------------------------------------------------- packing


def test_pack_awq_matches_the_documented_interleaved_layout_bit_for_bit():
    # Nibble p (bits 4p..4p+3) holds logical column AWQ_ORDER[p] = [0, 2, 4, 6, 1, 3, 5, 7][p].
    intweight = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [15, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 15]])
    zeros = torch.tensor([[9, 10, 11, 12, 13, 14, 15, 0]])
    qweight, qzeros = ref.pack_awq(intweight, zeros)
    # Row 0, nibbles p7..p0 hold columns 7,5,3,1,6,4,2,0 = values 8,6,4,2,7,5,3,1; bit 31 set -> negative.
    # Row 2: column 7 sits in the top nibble.
    expected_w = torch.tensor(
        [[0x86427531 - (1 << 32)], [0x0000000F], [0xF0000000 - (1 << 32)]], dtype=torch.int32
    )
    # Zeros: nibbles p7..p0 hold columns 7,5,3,1,6,4,2,0 = values 0,14,12,10,15,13,11,9.
    expected_z = torch.tensor([[0x0ECAFDB9]], dtype=torch.int32)
    assert qweight.dtype == torch.int32 and qzeros.dtype == torch.int32
    assert torch.equal(qweight, expected_w)
    assert torch.equal(qzeros, expected_z)
    back_w, back_z = ref.unpack_awq(qweight, qzeros)
    assert torch.equal(back_w, intweight.int()) and torch.equal(back_z, zeros.int())


def test_pack_unpack_round_trip_and_dequantize():
    k, n, group = 256, 192, 64
    intweight = torch.randint(0, 16, (k, n))
    zeros = torch.randint(0, 16, (k // group, n))
    qweight, qzeros = ref.pack_awq(intweight, zeros)
    assert qweight.shape == (k, n // 8) and qzeros.shape == (k // group, n // 8)
    iw, z = ref.unpack_awq(qweight, qzeros)
    assert torch.equal(iw, intweight.int()) and torch.equal(z, zeros.int())
    scales = torch.rand(k // group, n, dtype=torch.float16) + 0.01
    w = ref.dequantize_awq(qweight, qzeros, scales, group)
    expected = (intweight - zeros.repeat_interleave(group, 0)) * scales.double().repeat_interleave(group, 0)
    assert w.dtype == torch.float16 and w.shape == (k, n)
    assert torch.equal(w, expected.half())


def test_pack_awq_rejects_out_of_range_values_and_bad_widths():
    with pytest.raises(ValueError, match="intweight"):
        ref.pack_awq(torch.full((4, 8), 16), torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by 8"):
        ref.pack_awq(torch.zeros(4, 12, dtype=torch.long), torch.zeros(1, 12, dtype=torch.long))


def test_quantize_int8_per_channel_error_is_at_most_half_a_step():
    w = torch.randn(96, 160)
    q, s = ref.quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (96,) and q.abs().max() <= 127
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all()


# ------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_awq_reference_matches_fp64(dtype):
    k, n, group, m = 576, 192, 64, 7
    qweight, qzeros, scales, w64 = random_awq(k, n, group, dtype)
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    out = ref.awq_linear(x, qweight, qzeros, scales, group, bias)
    assert out.dtype == dtype and out.shape == (m, n)
    assert_rel_close(out, x.double() @ w64 + bias.double(), TOL[dtype], "reference awq_linear")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_w8a16_reference_matches_fp64(dtype):
    w_int8, scales = ref.quantize_int8_per_channel(torch.randn(192, 576))
    x = torch.randn(2, 3, 576, dtype=dtype)
    out = ref.w8a16_linear(x, w_int8, scales)
    assert out.dtype == dtype and out.shape == (2, 3, 192)
    expected = x.double() @ (w_int8.double() * scales.double()[:, None]).T
    assert_rel_close(out, expected, TOL[dtype], "reference w8a16_linear")


# ---------------------------------------------------------------------------------------------- triton

# (M, K, N, group, path, split_k): M 1 and 5 take split-K by default, 37 GEMM; forced paths cross over.
# 576 and 192 are not multiples of the 128-wide N tile; K=1536 is SmolLM2's down projection.
AWQ_CASES = [
    (1, 576, 576, 64, None, None),
    (5, 576, 192, 32, None, None),
    (37, 576, 192, 64, None, None),
    (1, 256, 192, 128, None, None),
    (5, 256, 576, 32, None, None),
    (37, 256, 576, 128, None, None),
    (16, 256, 192, 64, None, None),
    (37, 576, 576, 32, None, None),
    (37, 256, 192, 64, "splitk", None),
    (5, 576, 192, 32, "gemm", None),
    (5, 576, 192, 64, "splitk", 5),  # ragged last K slice
    (3, 1536, 576, 128, None, None),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,k,n,group,path,split_k", AWQ_CASES)
def test_triton_awq_linear_matches_fp64(m, k, n, group, path, split_k, dtype):
    qweight, qzeros, scales, w64 = random_awq(k, n, group, dtype)
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype) if m % 2 else None
    expected = x.double() @ w64 + (bias.double() if bias is not None else 0)
    args = [t.to(DEVICE) for t in (x, qweight, qzeros, scales)]
    out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
    got = tq.awq_linear(
        *args, group, bias.to(DEVICE) if bias is not None else None, path=path, split_k=split_k, out=out
    )
    assert got is out
    assert_rel_close(out, expected, TOL[dtype], f"triton awq_linear path={path}")
    # And it agrees with the torch reference to within the output rounding.
    assert_rel_close(out, ref.awq_linear(x, qweight, qzeros, scales, group, bias), TOL[dtype], "vs reference")


W8_CASES = [
    (1, 576, 576, None, None),
    (5, 576, 192, None, None),
    (37, 256, 192, None, None),
    (37, 576, 576, None, None),
    (37, 256, 192, "splitk", 3),
    (5, 256, 576, "gemm", None),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m,k,n,path,split_k", W8_CASES)
def test_triton_w8a16_linear_matches_fp64(m, k, n, path, split_k, dtype):
    w_int8, scales = ref.quantize_int8_per_channel(torch.randn(n, k))
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype) if m % 2 else None
    expected = x.double() @ (w_int8.double() * scales.double()[:, None]).T
    expected = expected + (bias.double() if bias is not None else 0)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
    got = tq.w8a16_linear(
        x.to(DEVICE),
        w_int8.to(DEVICE),
        scales.to(DEVICE),
        bias.to(DEVICE) if bias is not None else None,
        path=path,
        split_k=split_k,
        out=out,
    )
    assert got is out
    assert_rel_close(out, expected, TOL[dtype], f"triton w8a16_linear path={path}")


def test_triton_wrappers_keep_leading_dims_and_allocate_output():
    w_int8, scales = ref.quantize_int8_per_channel(torch.randn(64, 128))
    x = torch.randn(2, 3, 128, dtype=torch.float16)
    out = tq.w8a16_linear(x.to(DEVICE), w_int8.to(DEVICE), scales.to(DEVICE))
    assert out.shape == (2, 3, 64) and out.dtype == torch.float16
    assert_rel_close(out, ref.w8a16_linear(x, w_int8, scales).double(), 1e-2, "3-D x")


def test_triton_wrappers_reject_bad_arguments():
    qweight, qzeros, scales, _ = random_awq(128, 64, 64, torch.float16)
    x = torch.randn(2, 128, dtype=torch.float16)
    with pytest.raises(ValueError, match="group_size"):
        tq.awq_linear(x, qweight, qzeros, scales, 48)
    with pytest.raises(ValueError, match="x must end"):
        tq.awq_linear(x[:, :64], qweight, qzeros, scales, 64)
    with pytest.raises(ValueError, match="path"):
        tq.awq_linear(x, qweight, qzeros, scales, 64, path="gemv")
    with pytest.raises(ValueError, match="qzeros"):
        tq.awq_linear(x, qweight, qzeros[:1], scales, 64)
    with pytest.raises(ValueError, match="bias"):
        tq.awq_linear(x, qweight, qzeros, scales, 64, torch.randn(63, dtype=torch.float16))
    w_int8 = torch.zeros(64, 128, dtype=torch.int8)
    with pytest.raises(ValueError, match="w_int8"):
        tq.w8a16_linear(x, w_int8.float(), torch.ones(64))
    with pytest.raises(ValueError, match="scales"):
        tq.w8a16_linear(x, w_int8, torch.ones(63))
    with pytest.raises(ValueError, match="x must be"):
        tq.w8a16_linear(x.double(), w_int8, torch.ones(64))
