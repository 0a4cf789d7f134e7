"""SiLU-and-mul, the gated MLP activation. Same signature and result as kernels.reference.silu_and_mul.

Memory bound: reads gate_up [T, 2I] once, writes [T, I] once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,
    out_ptr,
    n_cols,
    stride_in_row,
    stride_in_col,
    stride_out_row,
    BLOCK: tl.constexpr,
):
    # Grid (rows, cdiv(I, BLOCK)): each program handles BLOCK columns of one row; the up half of
    # column j sits n_cols columns after its gate.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    src = gate_up_ptr + row * stride_in_row + cols * stride_in_col
    gate = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(src + n_cols * stride_in_col, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_out_row + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2I] -> [..., I]: silu(gate) * up, computed in fp32 and rounded once to gate_up's dtype."""
    if gate_up.dim() < 1 or gate_up.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"gate_up must be a float16/bfloat16/float32 tensor [..., 2I], got {gate_up.dtype} {tuple(gate_up.shape)}"
        )
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up's last dim must be even (gate and up halves), got {gate_up.shape[-1]}")
    inter = gate_up.shape[-1] // 2
    out = torch.empty(*gate_up.shape[:-1], inter, dtype=gate_up.dtype, device=gate_up.device)
    if out.numel() == 0:
        return out
    x2 = gate_up.reshape(-1, 2 * inter)  # copies only if the leading dims cannot be merged
    rows = x2.shape[0]
    block = min(triton.next_power_of_2(inter), 1024)
    num_warps = min(max(block // 256, 1), 4)
    _silu_and_mul_kernel[(rows, triton.cdiv(inter, block))](
        x2,
        out,
        inter,
        x2.stride(0),
        x2.stride(1),
        inter,  # out is fresh and contiguous
        BLOCK=block,
        num_warps=num_warps,
    )
    return out
