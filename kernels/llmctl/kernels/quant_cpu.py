"""CPU weight-only quantized linears, in a runtime layout built once at load.

With bf16 activations on a CPU with AVX512-BF16 or AVX2 (where the C++ kernels build), prepack takes llmctl's
own kernel (kernels/cpu/ops.cpp `quant_linear`, layouts there): 16-column blocks, dequantised a chunk at a time
into the cache and multiplied with vdpbf16ps (AVX2: fp32 FMA), so the weights are read once per call at 1 or 0.5 byte and the
dequantisation is paid once per call, whatever the row count. Its packed weight is 3-D ([N/16, K/2, ...]),
which is how the linears below tell it from torch's layouts. Everywhere else, torch's kernels:

Runtime layouts (from `prepack_w8a16` / `prepack_awq`; the stored formats are in quant_reference):
    int8: the stored w_int8 [N, K] as it is, scales [N] in the activation dtype.
    awq:  packed [N, K/2] uint8 in torch's CPU int4pack layout (codes q in 0..15), and
          scales_and_zeros [K/g, N, 2] in the activation dtype with dequant (q - 8) * scale + zero,
          so AWQ's w = (q - z) * s is zero = (8 - z) * s (exact in fp32, then rounded like the scale).
The kernels want scales in x's dtype, so for bf16 activations the scales are bf16: a per-channel gain
error up to 2^-9, the same size as rounding the weights themselves to bf16 (which the reference does).

Two paths, picked per call by the row count M (and x's dtype, see KERNEL_DTYPES):
    M <= SMALL_M: `_weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu` read 1 or 0.5 byte per weight
        and dequantize in registers. That is what batch-1 decode needs (it streams every weight from
        DRAM once per token), but they redo the dequantization for every 4 rows and multiply in fp32,
        so their cost grows ~3x faster with M than oneDNN's bf16 GEMM.
    M > SMALL_M: dequantize a tile of output rows at a time (TILE_BYTES of fp32 intermediates) into the
        activation dtype and run oneDNN's GEMM on it: the dequantization is paid once per call and spread
        over the M rows, and only one tile is ever materialised, never a dense copy of the layer.
"""

from __future__ import annotations

import functools

import torch

from llmctl.kernels import cpu
from llmctl.kernels.quant_reference import check_awq, check_w8a16, unpack_awq

# Prepack for llmctl's C++ kernel where it can take the layer (benchmarks turn it off to measure torch's).
CPU_KERNEL = True
# Rows up to which the torch kernels beat dequantize-a-tile + GEMM: the crossovers measured with
# benchmarks/bench_quant_linear.py on SmolLM2's shapes (2 Zen4 cores, bf16, weights streamed from DRAM;
# summed over a layer's four linears the paths tie near M = 16-24 for int8 and M = 128-256 for awq). Per
# call the tiled path pays ~0.12 ns (int8: one cast) / ~0.35 ns (int4: nibbles, transpose, scale) per
# weight to dequantize, then ~6 ps per weight and row in oneDNN's GEMM; the kernels ~15 ps per weight and row.
SMALL_M_INT8 = 16
SMALL_M_AWQ = 128
# torch's x86 kernels are vectorised (AVX512 / AVX2) for bf16 activations only. fp32 and fp16 run a scalar
# loop, slower than the tiled path at every M (1-3x at M = 1, ~20x at M = 32 on SmolLM2's shapes).
KERNEL_DTYPES = (torch.bfloat16,)
# fp32 bytes of dequantized weights the large-M path holds at once (transient, reused by the allocator).
TILE_BYTES = 4 << 20
# torch's CPU int4pack ignores inner_k_tiles for the layout; 2 only asks K % 32 == 0 (every AWQ group).
INNER_K_TILES = 2
INT4PACK_N_MULTIPLE = 16
INT8PACK_K_MULTIPLE = 16
# The int8 kernel reads x and w with aligned vector loads: a misaligned row pointer would fault.
ALIGNMENT = 64


# ------------------------------------------------------------------------------------------------- int8


def w8a16_packable(in_features: int) -> bool:
    """Whether torch's int8 kernel takes this layer: its vector loop steps 16 input features at a time."""
    return in_features % INT8PACK_K_MULTIPLE == 0


def _cpu_kernel_takes(dtype: torch.dtype, k: int, n: int, group_size: int | None = None) -> bool:
    return (CPU_KERNEL and dtype == torch.bfloat16 and cpu.quant_packable(k, n, group_size)
            and cpu.quant_linear_available())


def prepack_w8a16(
    w_int8: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_int8 [N, K], scales [N]) -> llmctl's kernel layout (cpu.pack_int8) where it takes the layer; else
    the same int8 weight, aligned for torch's kernel's aligned vector loads (a copy only when it sits at an
    odd offset, e.g. inside a loaded file), and scales in `dtype`."""
    k, n = check_w8a16(w_int8, scales)
    if _cpu_kernel_takes(dtype, k, n):
        return cpu.pack_int8(w_int8, scales)
    if not w8a16_packable(k):
        raise ValueError(
            f"in_features={k} is not a multiple of {INT8PACK_K_MULTIPLE}: torch's int8 kernel cannot take it"
        )
    return _aligned(w_int8.contiguous()), scales.to(dtype)


def w8a16_linear(
    x: torch.Tensor, w_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] @ (w_int8 [N, K] * scales[:, None]).T (+ bias) -> [..., N]; scales [N] in x's dtype.

    Memory traffic: 1 byte per weight; past SMALL_M_INT8 rows also a write and a read of each tile in x's
    dtype, which stays in cache. A 3-D w_int8 is llmctl's packed layout (prepack_w8a16).
    """
    if w_int8.dim() == 3:
        return cpu.quant_linear(x, w_int8, scales, 0, bias)
    k, n = check_w8a16(w_int8, scales)
    x2 = _rows(x, k, scales)
    if x2.shape[0] <= SMALL_M_INT8 and x.dtype in KERNEL_DTYPES:
        y = torch.ops.aten._weight_int8pack_mm(_aligned(x2), w_int8, scales)
        if bias is not None:
            y += bias
    else:
        y = _w8a16_tiled(x2, w_int8, scales, bias)
    return y.reshape(*x.shape[:-1], n)


@torch.no_grad()  # out= ops record no grads; like torch's kernels, these are inference-only
def _w8a16_tiled(x: torch.Tensor, w_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
    n, k = w_int8.shape
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    # Scaling the GEMM's output [M, N] rather than each tile saves a pass over the weights (the int8 values
    # are exact in x's dtype). fp16 cannot hold x @ w_int8.T (up to 127 |x| K), so there the tile is scaled,
    # exactly in fp32 and rounded once, which are the weights the small-M kernel uses.
    scale_output = x.dtype != torch.float16
    rows = _tile_rows(k)
    for n0 in range(0, n, rows):
        n1 = min(n, n0 + rows)
        if scale_output:
            w = w_int8[n0:n1].to(x.dtype)  # [rows, K]
        else:
            w = w_int8[n0:n1].float().mul_(scales[n0:n1, None].float()).to(x.dtype)
        _gemm(x, w.T, None if scale_output else bias, n0, n1, y)
    if not scale_output:
        return y
    if bias is None:
        return y.mul_(scales)
    return torch.addcmul(bias, y, scales, out=y)


# -------------------------------------------------------------------------------------------------- awq


def awq_packable(in_features: int, out_features: int, group_size: int) -> bool:
    """Whether torch's int4pack kernel takes this layer (it packs output rows 16 at a time)."""
    return out_features % INT4PACK_N_MULTIPLE == 0 and in_features % (16 * INNER_K_TILES) == 0 and (
        group_size in (32, 64, 128, 256)
    )


def prepack_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAWQ GEMM tensors -> llmctl's kernel layout where it takes the layer (cpu.pack_int4: packed
    [N/16, K/2, 16] uint8, scales_and_zeros [2, K/g, N] fp16: AWQ's scales, then its zeros); else torch's
    (packed [N, K/2] uint8, scales_and_zeros [K/g, N, 2] in `dtype`)."""
    k, n = check_awq(qweight, qzeros, scales, group_size)
    if _cpu_kernel_takes(dtype, k, n, group_size):
        q, z = unpack_awq(qweight, qzeros)  # [K, N], [K/g, N]
        return cpu.pack_int4(q.T, z, scales)
    if not awq_packable(k, n, group_size):
        raise ValueError(f"a {k}->{n} layer with group size {group_size} does not fit torch's int4pack")
    q, z = unpack_awq(qweight, qzeros)  # [K, N], [K/g, N] int32 in 0..15
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.T.contiguous(), INNER_K_TILES)
    s = scales.float()
    return packed, torch.stack([s, (8 - z).float() * s], dim=-1).to(dtype)


def awq_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., K] @ w (+ bias) -> [..., N], w[k, n] = (q - 8) * scale + zero of k's group (see module doc).

    Memory traffic: 0.5 byte per weight plus 2 scalars per group and output; past SMALL_M_AWQ rows also the
    tile's fp32 intermediates, which stay in cache. A 3-D `packed` is llmctl's layout (prepack_awq).
    """
    if packed.dim() == 3:
        return cpu.quant_linear(x, packed, scales_and_zeros, group_size, bias)
    n, k = packed.shape[0], packed.shape[1] * 2
    if scales_and_zeros.dim() != 3 or tuple(scales_and_zeros.shape) != (k // group_size, n, 2):
        raise ValueError(
            f"scales_and_zeros must be [{k // group_size}, {n}, 2], got {tuple(scales_and_zeros.shape)}"
        )
    x2 = _rows(x, k, scales_and_zeros)
    layout = _int4pack_layout()
    if (x2.shape[0] <= SMALL_M_AWQ and x.dtype in KERNEL_DTYPES) or layout is None:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group_size, scales_and_zeros)
        if bias is not None:
            y += bias
    else:
        y = _awq_tiled(x2, packed, scales_and_zeros, group_size, bias, layout)
    return y.reshape(*x.shape[:-1], n)


@torch.no_grad()  # out= ops record no grads; like torch's kernels, these are inference-only
def _awq_tiled(x, packed, scales_and_zeros, group_size: int, bias, layout: tuple[int, bool]) -> torch.Tensor:
    n, k = packed.shape[0], packed.shape[1] * 2
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    s, zero = scales_and_zeros.unbind(-1)  # [K/g, N] each
    for data, lanes, c0, c1 in _int4_tiles(packed, layout, _tile_rows(k)):
        w = _dequantize_int4_tile(data, lanes, s[:, c0:c1], zero[:, c0:c1], group_size)  # [K, c1 - c0]
        _gemm(x, w, bias, c0, c1, y)
    return y


# ----------------------------------------------------------------------------------------------- helpers


def _rows(x: torch.Tensor, k: int, scales: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> contiguous [M, K], checked against the prepacked dtype."""
    if x.shape[-1] != k:
        raise ValueError(f"x must end in in_features={k}, got {tuple(x.shape)}")
    if x.dtype != scales.dtype:
        raise ValueError(f"the layer was prepacked for {scales.dtype} activations, got {x.dtype}")
    return x.reshape(-1, k).contiguous()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t itself when its data starts on an ALIGNMENT boundary (fresh CPU tensors do), else a fresh copy."""
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone()


def _tile_rows(k: int) -> int:
    """Output features per dequantized tile: TILE_BYTES of fp32 weights, a multiple of 64, at least 64."""
    return max(64, TILE_BYTES // (4 * k) // 64 * 64)


def _gemm(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None, c0: int, c1: int, y: torch.Tensor):
    """y[:, c0:c1] = x [M, K] @ w_t [K, c1-c0] (+ bias[c0:c1]), written in place."""
    if bias is None:
        torch.mm(x, w_t, out=y[:, c0:c1])
    else:
        torch.addmm(bias[c0:c1], x, w_t, out=y[:, c0:c1])


# torch's int4pack CPU layout depends on the CPU capability it dispatched to. For BLOCK output rows
# (64 with AVX512, 32 otherwise) it stores [K, BLOCK/2] bytes per block: in the "lanes" layout (AVX512,
# AVX2) byte j holds row j in its low nibble and row j + BLOCK/2 in its high one; in the "pairs" layout
# (no vector unit, and every layout's last partial block) byte j holds rows 2j and 2j + 1.
_LAYOUTS = ((64, True), (32, True), (32, False))


@functools.cache
def _int4pack_layout() -> tuple[int, bool] | None:
    """(BLOCK, lanes) of this process's int4pack, found by packing a probe and decoding it with the very
    code the large-M path runs; None (unknown layout): the large-M path falls back to the kernel."""
    n, k = 2 * 64 + 16, 64  # two full blocks of either size and a partial one
    probe = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, INNER_K_TILES)
    ones = torch.ones(1, n)
    for layout in _LAYOUTS:
        w = torch.empty(k, n)
        for data, lanes, c0, c1 in _int4_tiles(packed, layout, n):
            w[:, c0:c1] = _dequantize_int4_tile(data, lanes, ones[:, c0:c1], 8 * ones[:, c0:c1], k)
        if torch.equal(w.T, probe.float()):
            return layout
    return None


def _int4_tiles(packed: torch.Tensor, layout: tuple[int, bool], rows: int):
    """(bytes [blocks, K, W], lanes, first row, end row) per tile of about `rows` output rows: whole blocks,
    then the partial last block (always in the pairs layout) on its own."""
    block, lanes = layout
    n, half_k = packed.shape
    full = n // block * block
    flat = packed.reshape(-1)
    if full:
        data = flat[: full * half_k].view(full // block, 2 * half_k, block // 2)
        step = max(1, rows // block)
        for b0 in range(0, full // block, step):
            b1 = min(full // block, b0 + step)
            yield data[b0:b1], lanes, b0 * block, b1 * block
    if n > full:
        yield flat[full * half_k:].view(1, 2 * half_k, (n - full) // 2), False, full, n


def _dequantize_int4_tile(
    data: torch.Tensor, lanes: bool, s: torch.Tensor, zero: torch.Tensor, group_size: int
) -> torch.Tensor:
    """int4pack bytes [blocks, K, W] -> w^T [K, rows] in s's dtype: (q - 8) * s + zero, rounded once.

    s, zero: [K/g, rows]. The arithmetic runs in fp32, where q * s + (zero - 8 s) is exact, so the tile
    holds the small-M kernel's weights rounded once to the activation dtype.
    """
    k = data.shape[1]
    s32 = s.float().unsqueeze(1)  # [G, 1, rows]
    w = _int4_codes(data, lanes).to(torch.float32).unflatten(0, (k // group_size, group_size))  # [G, g, rows]
    w.mul_(s32).add_(zero.float().unsqueeze(1) - 8 * s32)
    return w.flatten(0, 1).to(s.dtype)


_LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F


def _int4_codes(data: torch.Tensor, lanes: bool) -> torch.Tensor:
    """int4pack bytes [blocks, K, W] -> codes [K, rows] uint8 in 0..15, rows in output order."""
    blocks, k, width = data.shape
    if lanes and width % 8 == 0:
        # Eight bytes per int64: one op splits sixteen nibbles, and the (block, K) transpose into the
        # [K, rows] order the GEMM reads moves 8-byte words instead of single codes.
        words = data.view(torch.int64)  # [blocks, K, W/8]
        codes = torch.empty(k, blocks, 2, width // 8, dtype=torch.int64, device=data.device)
        torch.bitwise_and(words, _LOW_NIBBLES, out=codes[:, :, 0].transpose(0, 1))
        torch.bitwise_and(words >> 4, _LOW_NIBBLES, out=codes[:, :, 1].transpose(0, 1))
        return codes.view(torch.uint8).view(k, -1)
    # lanes: [K, blocks, 2, W] (low nibbles are the block's first W rows); pairs: [K, blocks, W, 2].
    codes = torch.empty((k, blocks, 2, width) if lanes else (k, blocks, width, 2), dtype=torch.uint8,
                        device=data.device)
    low, high = (codes[:, :, 0], codes[:, :, 1]) if lanes else (codes[..., 0], codes[..., 1])
    torch.bitwise_and(data, 15, out=low.transpose(0, 1))
    torch.bitwise_right_shift(data, 4, out=high.transpose(0, 1))
    return codes.view(k, -1)
