"""Plain-torch references for weight-only quantized linears, and the pack/unpack helpers of their formats.

W8A16: int8 weights [out, in] with one float scale per output channel [out]:
    y = x @ (w_int8 * scale[:, None]).T + bias
W4A16 in the AutoAWQ GEMM layout (asymmetric, 4-bit, group size g along the input dim):
    qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales fp16/bf16 [in/g, out]
    w[i, o] = (q[i, o] - z[i // g, o]) * s[i // g, o];  y = x @ w + bias
Each int32 holds eight consecutive output columns, interleaved: the nibble at bit 4p holds logical
column AWQ_ORDER[p] of its pack (AutoAWQ's `order_map`), so logical column j sits at bits
4 * AWQ_ORDER.index(j) = AWQ_SHIFTS[j]. qzeros packs the same way.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Bit offset of logical column j within its int32: 4 * AWQ_ORDER.index(j) = 4 * ((j % 2) * 4 + j // 2).
AWQ_SHIFTS = tuple(4 * AWQ_ORDER.index(j) for j in range(8))
AWQ_PACK = 8


def _pack_columns(values: torch.Tensor, name: str) -> torch.Tensor:
    """[R, C] ints in 0..15 -> [R, C/8] int32 in the AWQ interleaved order (bit pattern kept as int32)."""
    if values.dim() != 2 or values.shape[1] % AWQ_PACK:
        raise ValueError(f"{name} must be 2-D with a column count divisible by 8, got {tuple(values.shape)}")
    v = values.to(torch.int64)
    if v.numel() and (v.min() < 0 or v.max() > 15):
        raise ValueError(f"{name} must hold 4-bit values in 0..15")
    shifts = torch.tensor(AWQ_SHIFTS, dtype=torch.int64, device=v.device)
    # Nibbles do not overlap, so the sum is the bitwise or; int64 avoids overflow at bit 31.
    packed = (v.view(v.shape[0], -1, AWQ_PACK) << shifts).sum(-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # reinterpret as signed int32
    return packed.to(torch.int32)


def _unpack_columns(packed: torch.Tensor, name: str) -> torch.Tensor:
    """[R, C/8] int32 -> [R, C] int32 in 0..15, logical column order."""
    if packed.dim() != 2 or packed.dtype != torch.int32:
        raise ValueError(f"{name} must be a 2-D int32 tensor, got {tuple(packed.shape)} {packed.dtype}")
    shifts = torch.tensor(AWQ_SHIFTS, dtype=torch.int64, device=packed.device)
    # Sign-extending to int64 then masking recovers every nibble, bit 31 included.
    v = (packed.to(torch.int64)[..., None] >> shifts) & 0xF
    return v.reshape(packed.shape[0], -1).to(torch.int32)


def pack_awq(intweight: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """intweight [in, out] and zeros [in/g, out], ints in 0..15 -> (qweight [in, out/8], qzeros [in/g, out/8])."""
    if intweight.dim() != 2 or zeros.dim() != 2 or intweight.shape[1] != zeros.shape[1]:
        raise ValueError(
            f"intweight [in, out] and zeros [in/g, out] must share out, got {tuple(intweight.shape)}"
            f" and {tuple(zeros.shape)}"
        )
    return _pack_columns(intweight, "intweight"), _pack_columns(zeros, "zeros")


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight [in, out/8], qzeros [in/g, out/8]) int32 -> (intweight [in, out], zeros [in/g, out]) int32."""
    return _unpack_columns(qweight, "qweight"), _unpack_columns(qzeros, "qzeros")


def check_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> tuple[int, int]:
    """Validates the AWQ tensors against each other; returns (in_features, out_features)."""
    if qweight.dim() != 2 or qweight.dtype != torch.int32:
        raise ValueError(f"qweight must be int32 [in, out/8], got {tuple(qweight.shape)} {qweight.dtype}")
    k, n = qweight.shape[0], qweight.shape[1] * AWQ_PACK
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group_size must divide in_features={k}, got {group_size}")
    groups = k // group_size
    if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != (groups, n // AWQ_PACK):
        raise ValueError(
            f"qzeros must be int32 [{groups}, {n // AWQ_PACK}], got {tuple(qzeros.shape)} {qzeros.dtype}"
        )
    if not scales.is_floating_point() or tuple(scales.shape) != (groups, n):
        raise ValueError(f"scales must be float [{groups}, {n}], got {tuple(scales.shape)} {scales.dtype}")
    return k, n


def dequantize_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """w [in, out] in scales' dtype: (q - z) * s, rounded once (the product is exact in fp32)."""
    check_awq(qweight, qzeros, scales, group_size)
    q, z = unpack_awq(qweight, qzeros)
    z = z.repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return ((q - z).float() * s).to(scales.dtype)


def awq_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., in] @ dequantized w [in, out] (+ bias) -> [..., out] in x's dtype, fp32 accumulation.

    Memory traffic of the real kernel: 0.5 byte per weight plus (2 + 0.125) bytes per group and column;
    this reference materialises the full weight in x's dtype first.
    """
    k, n = check_awq(qweight, qzeros, scales, group_size)
    if x.shape[-1] != k:
        raise ValueError(f"x must end in in_features={k}, got {tuple(x.shape)}")
    w = dequantize_awq(qweight, qzeros, scales, group_size).to(x.dtype)
    y = x.reshape(-1, k).float() @ w.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] float -> (w_int8 [out, in] in -127..127, scales [out] float32), symmetric per row."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"w must be a 2-D float tensor [out, in], got {tuple(w.shape)} {w.dtype}")
    wf = w.float()
    scales = (wf.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    w_int8 = torch.round(wf / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return w_int8, scales


def check_w8a16(w_int8: torch.Tensor, scales: torch.Tensor) -> tuple[int, int]:
    """Validates the W8A16 tensors; returns (in_features, out_features)."""
    if w_int8.dim() != 2 or w_int8.dtype != torch.int8:
        raise ValueError(f"w_int8 must be int8 [out, in], got {tuple(w_int8.shape)} {w_int8.dtype}")
    n, k = w_int8.shape
    if not scales.is_floating_point() or tuple(scales.shape) != (n,):
        raise ValueError(f"scales must be float [{n}], got {tuple(scales.shape)} {scales.dtype}")
    return k, n


def w8a16_linear(
    x: torch.Tensor, w_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., in] @ (w_int8 * scales[:, None]).T (+ bias) -> [..., out] in x's dtype, fp32 accumulation.

    Memory traffic of the real kernel: 1 byte per weight; this reference materialises it in x's dtype.
    """
    k, n = check_w8a16(w_int8, scales)
    if x.shape[-1] != k:
        raise ValueError(f"x must end in in_features={k}, got {tuple(x.shape)}")
    w = (w_int8.float() * scales.float()[:, None]).to(x.dtype)
    y = x.reshape(-1, k).float() @ w.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
