"""Weight-only quantized linears: W8A16 (int8 [out, in], per-channel scales) and W4A16 in the AutoAWQ
GEMM layout (see kernels/quant_reference.py for the formats). Weights are dequantized tile by tile in
registers and fed to tl.dot; the full-precision weight never exists in memory.

Two launch shapes share one kernel per format:
- GEMM (prefill): 2-D grid of [BLOCK_M, BLOCK_N] output tiles, each looping over all of K.
- split-K (decode, M <= 16): BLOCK_M = 16 and K cut into SPLIT_K slices on a third grid axis, so a
  handful of rows still spreads the weight read over every SM; fp32 partials [SPLIT_K, M, N] are
  summed (then scaled, biased, cast) by a small reduce kernel. Deterministic, no atomics.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from llmctl.kernels.quant_reference import check_awq, check_w8a16

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SPLITK_MAX_M = 16  # the wrapper takes the split-K (GEMV) path at or below this many rows
# Triton 3.9's interpreter multiplies bf16 tl.dot operands as their raw uint16 bits; there the bf16
# operands go through an fp32 dot instead (bf16 products are exact in fp32, so the math is the same).
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fp32_dot(dtype: torch.dtype) -> bool:
    """fp32 x needs an IEEE fp32 dot (not tf32) to meet fp32 tolerances."""
    return dtype == torch.float32 or (_INTERPRETER and dtype == torch.bfloat16)


@triton.jit
def _awq_matmul_kernel(
    x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr,
    M, N, K, k_per_split,
    stride_xm, stride_xk, stride_qk, stride_qn, stride_zg, stride_zn, stride_sg, stride_sn,
    stride_om, stride_on,
    GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # x [M, K] @ dequant(qweight [K, N/8], qzeros [K/G, N/8], scales [K/G, N]) over K slice pid_k.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    # Logical column j of a pack of 8 sits at nibble AWQ_ORDER.index(j) = (j % 2) * 4 + j // 2.
    j = offs_n % 8
    shifts = ((j % 2) * 4 + j // 2) * 4
    pack_col = offs_n // 8
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        # Each int32 is loaded by the 8 lanes that share it; the repeats hit L1.
        q = tl.load(
            qw_ptr + offs_k[:, None] * stride_qk + pack_col[None, :] * stride_qn,
            mask=k_mask[:, None] & n_mask[None, :],
            other=0,
        )
        # BLOCK_K divides GROUP_SIZE and k0 is a multiple of BLOCK_K: one group per tile.
        g = k0 // GROUP_SIZE
        z = tl.load(qz_ptr + g * stride_zg + pack_col * stride_zn, mask=n_mask, other=0)
        s = tl.load(s_ptr + g * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)
        qv = (q >> shifts[None, :]) & 0xF
        zv = (z >> shifts) & 0xF
        # (q - z) * s is exact in fp32; rounding to the scales' dtype matches the reference dequant.
        w = (qv - zv[None, :]).to(tl.float32) * s.to(tl.float32)[None, :]
        w = w.to(s_ptr.dtype.element_ty).to(x_ptr.dtype.element_ty)
        if FP32_DOT:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(
            out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
            acc.to(out_ptr.dtype.element_ty),
            mask=out_mask,
        )
    else:
        # Workspace [SPLIT_K, M, N] fp32, contiguous.
        tl.store(ws_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=out_mask)


@triton.jit
def _w8a16_matmul_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, ws_ptr,
    M, N, K, k_per_split,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # x [M, K] @ w_int8 [N, K]^T over K slice pid_k; the per-column scale is applied after the sum.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        # [BLOCK_K, BLOCK_N] tile of w^T; int8 values are exact in fp16/bf16/fp32.
        q = tl.load(
            w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk,
            mask=k_mask[:, None] & n_mask[None, :],
            other=0,
        )
        if FP32_DOT:
            acc = tl.dot(a.to(tl.float32), q.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, q.to(x_ptr.dtype.element_ty), acc)
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        acc *= tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(
            out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
            acc.to(out_ptr.dtype.element_ty),
            mask=out_mask,
        )
    else:
        tl.store(ws_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=out_mask)


@triton.jit
def _splitk_reduce_kernel(
    ws_ptr, scale_ptr, bias_ptr, out_ptr, M, N, stride_om, stride_on,
    SPLIT_K: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # out[m, n] = (sum_s ws[s, m, n]) * scale[n] + bias[n]; one row, BLOCK_N columns per program.
    pid_m = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(ws_ptr + (s * M + pid_m) * N + offs_n, mask=n_mask, other=0.0)
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_m * stride_om + offs_n * stride_on, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    # Under the interpreter (CPU tensors) any small number will do: it only sizes split-K.
    if device.type != "cuda":
        return 8
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _check_common(x, bias, out, k, n, others):
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.shape[-1] != k:
        raise ValueError(f"x must end in in_features={k}, got {tuple(x.shape)}")
    for name, t in others:
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if bias is not None:
        if tuple(bias.shape) != (n,) or not bias.is_floating_point():
            raise ValueError(f"bias must be float [{n}], got {tuple(bias.shape)} {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
        bias = bias.contiguous()
    shape = (*x.shape[:-1], n)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be {x.dtype} {shape} on {x.device}, got {out.dtype} {tuple(out.shape)}")
    return bias, out


def _plan(path, split_k, m, n, k, block_k, device):
    """(BLOCK_M, BLOCK_N, SPLIT_K, k_per_split, num_warps) for the chosen path."""
    if path is None:
        path = "splitk" if m <= SPLITK_MAX_M else "gemm"
    if path not in ("gemm", "splitk"):
        raise ValueError(f"path must be None, 'gemm' or 'splitk', got {path!r}")
    if path == "gemm":
        block_m = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
        return block_m, 128, 1, triton.cdiv(k, block_k) * block_k, 8 if block_m == 128 else 4
    block_m, block_n = 16, 64
    if split_k is None:
        # Enough (N tiles x K slices) programs to cover every SM twice, at least one K tile each.
        tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
        split_k = max(1, min(triton.cdiv(k, block_k), triton.cdiv(2 * _sm_count(device), tiles), 32))
    if split_k < 1:
        raise ValueError(f"split_k must be >= 1, got {split_k}")
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    return block_m, block_n, triton.cdiv(k, k_per_split), k_per_split, 4


def _launch_reduce(ws, scales, bias, out2, m, n, split):
    grid = (m, triton.cdiv(n, 128))
    _splitk_reduce_kernel[grid](
        ws, scales if scales is not None else ws, bias if bias is not None else ws, out2,
        m, n, out2.stride(0), out2.stride(1),
        SPLIT_K=split, HAS_SCALE=scales is not None, HAS_BIAS=bias is not None, BLOCK_N=128,
    )  # fmt: skip


def awq_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    path: str | None = None,
    split_k: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., in] @ AWQ-dequantized w [in, out] (+ bias) -> [..., out] in x's dtype.

    path: None picks split-K for M <= 16 rows and GEMM otherwise; 'gemm' / 'splitk' force one.
    split_k overrides the number of K slices of the split-K path; out, if given, is written in place.
    """
    k, n = check_awq(qweight, qzeros, scales, group_size)
    if scales.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"scales must be float16, bfloat16 or float32, got {scales.dtype}")
    bias, out = _check_common(
        x, bias, out, k, n, [("qweight", qweight), ("qzeros", qzeros), ("scales", scales)]
    )
    # BLOCK_K must divide the group so each K tile reads one row of zeros and scales.
    block_k = 64
    while group_size % block_k:
        block_k //= 2
    if block_k < 16:
        raise ValueError(f"group_size must be a multiple of 16, got {group_size}")
    x2 = x.reshape(-1, k)
    out2 = out.view(-1, n)
    m = x2.shape[0]
    if m == 0:
        return out
    block_m, block_n, split, k_per_split, warps = _plan(path, split_k, m, n, k, block_k, x.device)
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else out2
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split)
    _awq_matmul_kernel[grid](
        x2, qweight, qzeros, scales, bias if bias is not None else scales, out2, ws,
        m, n, k, k_per_split,
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1),
        qzeros.stride(0), qzeros.stride(1), scales.stride(0), scales.stride(1),
        out2.stride(0), out2.stride(1),
        GROUP_SIZE=group_size, HAS_BIAS=bias is not None, SPLIT_K=split, FP32_DOT=_fp32_dot(x.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3,
    )  # fmt: skip
    if split > 1:
        _launch_reduce(ws, None, bias, out2, m, n, split)
    return out


def w8a16_linear(
    x: torch.Tensor,
    w_int8: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    path: str | None = None,
    split_k: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., in] @ (w_int8 [out, in] * scales[:, None]).T (+ bias) -> [..., out] in x's dtype.

    path: None picks split-K for M <= 16 rows and GEMM otherwise; 'gemm' / 'splitk' force one.
    split_k overrides the number of K slices of the split-K path; out, if given, is written in place.
    """
    k, n = check_w8a16(w_int8, scales)
    bias, out = _check_common(x, bias, out, k, n, [("w_int8", w_int8), ("scales", scales)])
    scales = scales.contiguous()
    x2 = x.reshape(-1, k)
    out2 = out.view(-1, n)
    m = x2.shape[0]
    if m == 0:
        return out
    block_k = 64
    block_m, block_n, split, k_per_split, warps = _plan(path, split_k, m, n, k, block_k, x.device)
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else out2
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split)
    _w8a16_matmul_kernel[grid](
        x2, w_int8, scales, bias if bias is not None else scales, out2, ws,
        m, n, k, k_per_split,
        x2.stride(0), x2.stride(1), w_int8.stride(0), w_int8.stride(1), out2.stride(0), out2.stride(1),
        HAS_BIAS=bias is not None, SPLIT_K=split, FP32_DOT=_fp32_dot(x.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3,
    )  # fmt: skip
    if split > 1:
        _launch_reduce(ws, scales, bias, out2, m, n, split)
    return out
