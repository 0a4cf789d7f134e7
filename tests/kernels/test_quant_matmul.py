"""W8A16 and W4A16 (AutoAWQ GEMM layout) linears: the packing bit for bit, the torch references, both
Triton paths (GEMM, split-K) and both CPU runtime-layout paths (torch kernel, tiled dequantize + GEMM)
against fp64 math, on SmolLM2 widths (576, 1536) that are not multiples of 128. Triton runs under the
interpreter when there is no GPU."""

from __future__ import annotations

import itertools
import os
import platform
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from llmctl.kernels import cpu, quant_cpu  # noqa: E402
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


# ------------------------------------------------------------------------------- CPU runtime layouts

# Closeness is the relative Frobenius error against fp64 math on the same quantized weights. In bf16 the
# CPU paths round the scales and zeros to bf16 (<= 2^-9 each, per output channel or group), the output
# (2^-9), the output plus bias once more, and on the tiled path each dequantized weight too; together
# that measures ~2.8e-3 (the reference: ~2.3e-3; fp16 ~3e-4; fp32 ~4e-7). TOL leaves >3x headroom, and
# a wrong nibble, group or channel gives errors of order 1. Against the reference, fp32 needs 1e-3: the
# reference rounds AWQ weights to the scales' float16 first (~2e-4), the CPU path does not.
REF_TOL = {**TOL, torch.float32: 1e-3}
# llmctl: prepack for llmctl's C++ kernel (bf16 on AVX512-BF16 or AVX2; elsewhere prepack falls back to torch's
# layouts and the paths by M); kernel / tiled: torch's layouts, that path for every M.
CPU_PATHS = ("llmctl", "kernel", "tiled")


@pytest.fixture
def cpu_path(request, monkeypatch):
    """Forces quant_cpu's path for every M; small tiles so the tiled path loops over several."""
    monkeypatch.setattr(quant_cpu, "CPU_KERNEL", request.param == "llmctl")
    small = 1 << 30 if request.param == "kernel" else 0
    monkeypatch.setattr(quant_cpu, "SMALL_M_INT8", small)
    monkeypatch.setattr(quant_cpu, "SMALL_M_AWQ", small)
    monkeypatch.setattr(quant_cpu, "TILE_BYTES", 256 * 4 * 64)  # 64 output rows per tile at K=256
    return request.param


# (M, K, N, group): SmolLM2's qkv and down widths, a partial last 64-row block (N=144), group 128.
CPU_AWQ_CASES = [
    (1, 576, 960, 64), (5, 576, 960, 64), (33, 1536, 576, 64), (7, 256, 144, 32), (130, 128, 80, 128)
]


@pytest.mark.parametrize("cpu_path", CPU_PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,k,n,group", CPU_AWQ_CASES)
def test_cpu_awq_linear_matches_fp64_and_the_reference(m, k, n, group, dtype, cpu_path):
    qweight, qzeros, scales, w64 = random_awq(k, n, group, torch.float16)
    x = torch.randn(2, m, k, dtype=dtype)  # leading dims are kept
    bias = torch.randn(n, dtype=dtype) if m % 2 else None
    packed, scales_and_zeros = quant_cpu.prepack_awq(qweight, qzeros, scales, group, dtype)
    if packed.dim() == 3:  # llmctl's layout: blocks of 16 outputs x input pairs x 16 bytes; AWQ's fp16 s, z
        assert cpu_path == "llmctl" and dtype == torch.bfloat16 and cpu.quant_linear_available()
        assert packed.dtype == torch.uint8 and packed.shape == (n // 16, k // 2, 16)
        assert scales_and_zeros.dtype == torch.float16 and scales_and_zeros.shape == (2, k // group, n)
    else:
        assert packed.dtype == torch.uint8 and packed.shape == (n, k // 2)
        assert scales_and_zeros.dtype == dtype and scales_and_zeros.shape == (k // group, n, 2)
    out = quant_cpu.awq_linear(x, packed, scales_and_zeros, group, bias)
    assert out.dtype == dtype and out.shape == (2, m, n)
    expected = x.double() @ w64 + (bias.double() if bias is not None else 0)
    assert_rel_close(out, expected, TOL[dtype], f"cpu awq_linear {cpu_path}")
    reference = ref.awq_linear(x, qweight, qzeros, scales, group, bias)
    assert_rel_close(out, reference, REF_TOL[dtype], f"cpu awq_linear {cpu_path} vs reference")


# (M, K, N): SmolLM2's o and down widths, and a small odd N.
CPU_W8_CASES = [(1, 576, 576), (4, 1536, 576), (33, 576, 960), (130, 256, 200), (3, 160, 24)]


@pytest.mark.parametrize("cpu_path", CPU_PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,k,n", CPU_W8_CASES)
def test_cpu_w8a16_linear_matches_fp64_and_the_reference(m, k, n, dtype, cpu_path):
    w_int8, scales = ref.quantize_int8_per_channel(torch.randn(n, k))
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype) if m % 2 else None
    weight, packed_scales = quant_cpu.prepack_w8a16(w_int8, scales, dtype)
    if weight.dim() == 3:  # llmctl's layout: blocks of 16 outputs x input pairs x 32 int8; fp32 scales
        assert cpu_path == "llmctl" and dtype == torch.bfloat16 and n % 16 == 0
        assert weight.shape == (n // 16, k // 2, 32) and torch.equal(cpu.pack_int8(w_int8, scales)[0], weight)
        assert packed_scales.dtype == torch.float32
    else:
        assert torch.equal(weight, w_int8) and packed_scales.dtype == dtype
    out = quant_cpu.w8a16_linear(x, weight, packed_scales, bias)
    assert out.dtype == dtype and out.shape == (m, n)
    expected = x.double() @ (w_int8.double() * scales.double()[:, None]).T
    expected = expected + (bias.double() if bias is not None else 0)
    assert_rel_close(out, expected, TOL[dtype], f"cpu w8a16_linear {cpu_path}")
    assert_rel_close(out, ref.w8a16_linear(x, w_int8, scales, bias), REF_TOL[dtype], "vs reference")


def test_cpu_w8a16_copies_a_misaligned_weight_or_input_instead_of_faulting(monkeypatch):
    # torch's int8 kernel uses aligned vector loads; a tensor at an odd offset in a loaded file would fault.
    monkeypatch.setattr(quant_cpu, "CPU_KERNEL", False)
    w_int8, scales = ref.quantize_int8_per_channel(torch.randn(64, 160))
    odd = torch.empty(64 * 160 + 1, dtype=torch.int8)[1:].view(64, 160).copy_(w_int8)
    weight, packed_scales = quant_cpu.prepack_w8a16(odd, scales, torch.bfloat16)
    assert weight.data_ptr() % quant_cpu.ALIGNMENT == 0 and torch.equal(weight, w_int8)
    x = torch.randn(3 * 160 + 8, dtype=torch.bfloat16)[8:].view(3, 160)  # 16 bytes past an aligned start
    out = quant_cpu.w8a16_linear(x, weight, packed_scales)
    assert_rel_close(out, ref.w8a16_linear(x, w_int8, scales), TOL[torch.bfloat16], "misaligned x")


def _pack_int4_layout(codes: torch.Tensor, block: int, lanes: bool) -> torch.Tensor:
    """codes [N, K] in 0..15 -> bytes as torch's int4pack lays them out for (block, lanes) (see quant_cpu)."""
    n, k = codes.shape
    full = n // block * block
    parts = []
    for b0 in range(0, full, block):
        blk = codes[b0:b0 + block].T  # [K, block]
        low, high = (blk[:, : block // 2], blk[:, block // 2:]) if lanes else (blk[:, 0::2], blk[:, 1::2])
        parts.append((low | high << 4).reshape(-1))
    if n > full:
        tail = codes[full:].T
        parts.append((tail[:, 0::2] | tail[:, 1::2] << 4).reshape(-1))
    return torch.cat(parts).to(torch.uint8).view(n, k // 2)


@pytest.mark.parametrize("layout", quant_cpu._LAYOUTS)
def test_every_known_int4pack_layout_decodes_to_its_codes(layout):
    # Only one layout runs on a given CPU; the others are checked against their documented packing here.
    n, k, group = 2 * 64 + 48, 64, 32
    codes = torch.randint(0, 16, (n, k))
    packed = _pack_int4_layout(codes, *layout)
    ones = torch.ones(k // group, n)
    w = torch.empty(k, n)
    for data, lanes, c0, c1 in quant_cpu._int4_tiles(packed, layout, 64):
        w[:, c0:c1] = quant_cpu._dequantize_int4_tile(data, lanes, ones[:, c0:c1], 8 * ones[:, c0:c1], group)
    assert torch.equal(w.T, codes.float())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="_LAYOUTS lists torch's x86 int4pack layouts (AVX512, AVX2, scalar); other CPUs pack their own way")
def test_this_cpus_int4pack_layout_is_known():
    # If torch changes its layout, the probe finds none and large M falls back to the (slower) kernel.
    assert quant_cpu._int4pack_layout() in quant_cpu._LAYOUTS


def test_cpu_layouts_refuse_shapes_and_dtypes_their_kernels_cannot_take():
    qweight, qzeros, scales, _ = random_awq(128, 24, 64, torch.float16)  # 24 rows: not a multiple of 16
    assert not quant_cpu.awq_packable(128, 24, 64) and quant_cpu.awq_packable(128, 32, 64)
    with pytest.raises(ValueError, match="int4pack"):
        quant_cpu.prepack_awq(qweight, qzeros, scales, 64, torch.bfloat16)
    assert not quant_cpu.w8a16_packable(72) and quant_cpu.w8a16_packable(160)
    with pytest.raises(ValueError, match="multiple of 16"):
        quant_cpu.prepack_w8a16(torch.zeros(8, 72, dtype=torch.int8), torch.ones(8), torch.bfloat16)
    weight, packed_scales = quant_cpu.prepack_w8a16(
        torch.zeros(8, 64, dtype=torch.int8), torch.ones(8), torch.bfloat16
    )
    with pytest.raises(ValueError, match="prepacked for torch.bfloat16"):
        quant_cpu.w8a16_linear(torch.randn(2, 64), weight, packed_scales)
    qweight, qzeros, scales, _ = random_awq(128, 32, 64, torch.float16)
    packed, scales_and_zeros = quant_cpu.prepack_awq(qweight, qzeros, scales, 64, torch.float32)
    with pytest.raises(ValueError, match="x must end"):
        quant_cpu.awq_linear(torch.randn(2, 64), packed, scales_and_zeros, 64)


# llmctl's own kernel (kernels/cpu quant_linear): every row count of the direct path (M <= 4) and the
# chunked one, an odd number of 16-column blocks (the last task holds one), inputs that are not a whole
# number of 512-pair chunks nor of the direct path's 4-pair steps (int8), and groups of 8 to 128 inputs.
QUANT_KERNEL_CASES = [(1, 576, 48, 64), (2, 170, 16, 0), (3, 264, 80, 8), (4, 1536, 32, 128), (5, 576, 48, 32),
                      (13, 170, 48, 0), (40, 264, 16, 8), (9, 1536, 80, 0), (17, 1536, 48, 64)]  # 512 + 256 pairs


@pytest.mark.skipif(not cpu.quant_linear_available(), reason="llmctl's quantized linear needs AVX512-BF16 or AVX2")
@pytest.mark.parametrize("m,k,n,group", QUANT_KERNEL_CASES)
def test_llmctl_quant_linear_matches_fp64_at_every_row_count(m, k, n, group):
    torch.manual_seed(m)
    x = torch.randn(m, k, dtype=torch.bfloat16)
    bias = torch.randn(n, dtype=torch.bfloat16)
    if group == 0:
        w_int8, scales = ref.quantize_int8_per_channel(torch.randn(n, k))
        packed, packed_scales = cpu.pack_int8(w_int8, scales)
        w64 = (w_int8.double() * scales.double()[:, None]).T
    else:
        qweight, qzeros, scales, w64 = random_awq(k, n, group, torch.float16)
        codes, zeros = ref.unpack_awq(qweight, qzeros)
        packed, packed_scales = cpu.pack_int4(codes.T, zeros, scales)
    out = cpu.quant_linear(x, packed, packed_scales, group, bias)
    expected = x.double() @ w64 + bias.double()
    # Only the output's bf16 rounding (and, for 4-bit, the weights' once to bf16 past 4 rows) remains.
    assert_rel_close(out, expected, 4e-3, f"quant_linear m={m} group={group}")
    one_row = cpu.quant_linear(x[-1:], packed, packed_scales, group, bias)  # rows are independent
    assert_rel_close(one_row, expected[-1:], 4e-3, "last row alone")


# The blocked bf16 layout read in place: the direct path (M <= 4), tiles of 3 blocks by 8 rows (M < 128) and of 4
# blocks by 6 rows (M >= 128), with 5 blocks of 16 columns (the last task partial in both) and 85 input pairs
# (neither the direct path's 4-pair steps nor a whole pass).
BF16_KERNEL_CASES = [(1, 170, 80), (4, 576, 48), (5, 170, 80), (13, 1536, 48), (40, 170, 80), (130, 170, 80),
                     (203, 576, 80), (9, 2304, 48), (131, 2304, 64)]  # the last two: passes of 1024 + 128 pairs


@pytest.mark.skipif(not cpu.quant_linear_available(), reason="llmctl's bf16 linear needs AVX512-BF16 or AVX2")
@pytest.mark.parametrize("m,k,n", BF16_KERNEL_CASES)
def test_llmctl_bf16_linear_matches_fp64_at_every_row_count(m, k, n):
    torch.manual_seed(m)
    x = torch.randn(m, k, dtype=torch.bfloat16)
    w = torch.randn(n, k, dtype=torch.bfloat16)
    bias = torch.randn(n, dtype=torch.bfloat16)
    packed = cpu.pack_bf16(w)
    assert packed.shape == (n // 16, k // 2, 32) and packed.dtype == torch.bfloat16
    out = cpu.quant_linear(x, packed, None, 0, bias)
    expected = x.double() @ w.double().T + bias.double()
    assert_rel_close(out, expected, 4e-3, f"bf16 linear m={m}")  # only the output's rounding to bf16 remains
    assert_rel_close(cpu.quant_linear(x[-1:], packed, None), expected[-1:] - bias.double(), 4e-3, "last row alone")


@pytest.mark.skipif(not cpu.blocked_bf16_preferred(), reason="dense weights keep oneDNN's layout on this CPU")
def test_dense_bf16_weights_prepack_to_the_blocked_layout_unless_onednn_is_asked_for(monkeypatch):
    from llmctl import kernels

    w = torch.randn(96, 64, dtype=torch.bfloat16)
    x = torch.randn(7, 64, dtype=torch.bfloat16)
    blocked = kernels.prepack_linear_weight(w)
    assert blocked.dim() == 3
    assert_rel_close(kernels.linear(x, blocked), x.double() @ w.double().T, 4e-3, "kernels.linear")
    monkeypatch.setattr(kernels, "DENSE_LINEAR", "onednn")
    assert kernels.prepack_linear_weight(w).dim() != 3
    monkeypatch.setattr(kernels, "DENSE_LINEAR", "llmctl")
    # Widths the blocks cannot take, and other dtypes, keep the other paths.
    assert kernels.prepack_linear_weight(torch.randn(40, 64, dtype=torch.bfloat16)).dim() != 3
    assert kernels.prepack_linear_weight(torch.randn(96, 64)).dim() != 3


@pytest.mark.skipif(not cpu.quant_linear_available(), reason="llmctl's linear needs AVX512-BF16 or AVX2")
def test_llmctl_quant_linear_of_no_rows_is_empty():
    """A step with no row for a linear gets an empty answer, not a crash (it read past its dispatch table)."""
    w_int8, scales = ref.quantize_int8_per_channel(torch.randn(32, 64))
    for packed, packed_scales in (cpu.pack_int8(w_int8, scales), (cpu.pack_bf16(torch.randn(32, 64)), None)):
        out = cpu.quant_linear(torch.randn(0, 64, dtype=torch.bfloat16), packed, packed_scales)
        assert out.shape == (0, 32) and out.dtype == torch.bfloat16


def test_llmctl_quant_linear_rejects_activations_it_was_not_packed_for():
    w_int8, scales = ref.quantize_int8_per_channel(torch.randn(32, 64))
    packed, packed_scales = cpu.pack_int8(w_int8, scales)
    with pytest.raises(ValueError, match="bfloat16"):
        cpu.quant_linear(torch.randn(2, 64), packed, packed_scales)
    with pytest.raises(ValueError, match="64"):
        cpu.quant_linear(torch.randn(2, 32, dtype=torch.bfloat16), packed, packed_scales)


def _anon_huge_kib(address: int) -> int:
    """AnonHugePages of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(v, 16) for v in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def _thp_mode() -> str:
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    text = enabled.read_text() if enabled.exists() else "[never]"
    return text[text.index("[") + 1:text.index("]")]


def test_packed_weights_move_into_one_huge_page_mapping_in_order(monkeypatch):
    tensors = [cpu.pack_int8(*ref.quantize_int8_per_channel(torch.randn(n, 576)))[0] for n in (960, 576, 3072)]
    tensors.append(torch.randint(0, 255, (36, 288, 16), dtype=torch.uint8))  # a 4-bit layout
    copies = cpu.in_huge_pages(tensors)
    assert all(torch.equal(c, t) and c.dtype == t.dtype and c.data_ptr() != t.data_ptr()
               for c, t in zip(copies, tensors, strict=True))
    assert copies[0].data_ptr() % cpu.HUGE_PAGE == 0
    for before, after in itertools.pairwise(copies):  # one after another, each on a 64-byte boundary
        assert after.data_ptr() == before.data_ptr() + -(-before.nbytes // 64) * 64
    if platform.system() == "Linux" and _thp_mode() in ("always", "madvise"):
        # 3.8 MB of weights from a 2 MiB boundary: at least the first 2 MiB sit in one huge page.
        assert _anon_huge_kib(copies[0].data_ptr()) >= 2048
    del tensors
    assert int(copies[-1].sum()) >= 0  # the mapping outlives the originals (torch.frombuffer holds it)

    monkeypatch.setenv("LLMCTL_HUGE_PAGES", "0")
    assert cpu.in_huge_pages(copies) is copies
