"""RMSNorm (with the residual add fused in) and neox-style rotary embedding.

Same signatures and results as kernels.reference.rms_norm / rotary_embedding. Both are memory bound:
one program per token row, every element read and written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    new_res_ptr,
    n_cols,
    stride_x,
    stride_x_col,
    stride_res,
    stride_res_col,
    stride_out,
    stride_new_res,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program normalises one row [n_cols]; BLOCK is n_cols rounded up to a power of two.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols * stride_x_col, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols * stride_res_col, mask=mask, other=0.0)
        # Round the sum to the input dtype before normalising, as the reference's `x + residual` does.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(new_res_ptr.dtype.element_ty)
        tl.store(new_res_ptr + row * stride_new_res + cols, x, mask=mask)
    h = x.to(tl.float32)
    # Masked lanes are 0, so the sum covers the real columns only; divide by the real count.
    mean_sq = tl.sum(h * h, axis=0) / n_cols
    normed = (h * tl.rsqrt(mean_sq + eps)).to(x.dtype)  # the reference casts back before the weight
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual) normalised, and the new residual. x / residual: [..., hidden], weight: [hidden].

    Inputs are never modified: with a residual, the sum goes to a fresh tensor in the same pass;
    without one, x itself is returned as the new residual (as the reference does).
    """
    if x.dim() < 1 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"x must be a float16/bfloat16/float32 tensor [..., hidden], got {x.dtype} {tuple(x.shape)}"
        )
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"weight must be a float tensor [{hidden}], got {weight.dtype} {tuple(weight.shape)}"
        )
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual must match x ({x.dtype} {tuple(x.shape)}), got {residual.dtype} {tuple(residual.shape)}"
        )
    if weight.device != x.device or (residual is not None and residual.device != x.device):
        raise ValueError("x, weight and residual must be on the same device")
    weight = weight.contiguous()
    # Same output dtype as the reference's `weight * h.to(x.dtype)`.
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    new_residual = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else x
    if x.numel() == 0:
        return out, new_residual
    # 2-D views over the rows; reshape copies only if the leading dims cannot be merged.
    x2 = x.reshape(-1, hidden)
    r2 = residual.reshape(-1, hidden) if residual is not None else x2
    rows = x2.shape[0]
    block = triton.next_power_of_2(hidden)
    num_warps = min(max(block // 256, 1), 16)
    _rms_norm_kernel[(rows,)](
        x2,
        r2,
        weight,
        out,
        new_residual,
        hidden,
        x2.stride(0),
        x2.stride(1),
        r2.stride(0),
        r2.stride(1),
        hidden,  # out and new_residual are fresh and contiguous
        hidden,
        float(eps),
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=num_warps,
    )
    return out, new_residual


@triton.jit
def _rotate_heads(
    ptr,
    stride_h,
    stride_d,
    n_heads,
    half,
    c1,
    c2,
    s1,
    s2,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # ptr points at one token's [n_heads, 2 * half] (strided); c1/c2/s1/s2 are the cos/sin halves
    # [1, BLOCK_HALF] in fp32. Rotates in place, BLOCK_H heads at a time.
    d = tl.arange(0, BLOCK_HALF)[None, :]
    for h0 in range(0, n_heads, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)[:, None]
        mask = (h < n_heads) & (d < half)
        p1 = ptr + h * stride_h + d * stride_d  # first half of each head
        p2 = p1 + half * stride_d  # second half
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
        # neox: out = x * cos + cat(-x2, x1) * sin
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
        tl.store(p1, o1.to(ptr.dtype.element_ty), mask=mask)
        tl.store(p2, o2.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    n_q_heads,
    n_k_heads,
    half,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_ct,
    stride_cd,
    stride_st,
    stride_sd,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # One program per token: loads that token's cos/sin [D] once and rotates all its q and k heads.
    t = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    dmask = d < half
    c = cos_ptr + t * stride_ct
    s = sin_ptr + t * stride_st
    c1 = tl.load(c + d * stride_cd, mask=dmask, other=0.0).to(tl.float32)
    c2 = tl.load(c + (d + half) * stride_cd, mask=dmask, other=0.0).to(tl.float32)
    s1 = tl.load(s + d * stride_sd, mask=dmask, other=0.0).to(tl.float32)
    s2 = tl.load(s + (d + half) * stride_sd, mask=dmask, other=0.0).to(tl.float32)
    _rotate_heads(
        q_ptr + t * stride_qt, stride_qh, stride_qd, n_q_heads, half, c1, c2, s1, s2, BLOCK_HQ, BLOCK_HALF
    )
    _rotate_heads(
        k_ptr + t * stride_kt, stride_kh, stride_kd, n_k_heads, half, c1, c2, s1, s2, BLOCK_HK, BLOCK_HALF
    )


_MAX_TILE = 4096
"""Elements per [heads, D/2] tile: bounds registers when a model has many heads."""


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding, IN PLACE. q: [T, H, D], k: [T, KVH, D], cos/sin: [T, D].

    q and k may be strided views (slices of a fused qkv tensor); they are rotated where they lie and
    returned. Math in fp32, one rounding to q's dtype.
    """
    if q.dim() != 3 or q.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"q must be a float16/bfloat16/float32 tensor [T, H, D], got {q.dtype} {tuple(q.shape)}"
        )
    t, n_q, d = q.shape
    if d % 2:
        raise ValueError(f"q's head dim must be even for neox rotary, got {d}")
    if k.dim() != 3 or k.shape[0] != t or k.shape[2] != d or k.dtype != q.dtype:
        raise ValueError(f"k must be a {q.dtype} tensor [{t}, KVH, {d}], got {k.dtype} {tuple(k.shape)}")
    for name, c in (("cos", cos), ("sin", sin)):
        if c.shape != (t, d) or c.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be a float tensor [{t}, {d}], got {c.dtype} {tuple(c.shape)}")
    if not (q.device == k.device == cos.device == sin.device):
        raise ValueError("q, k, cos and sin must be on the same device")
    if t == 0:
        return q, k
    half = d // 2
    block_half = triton.next_power_of_2(half)
    max_heads = max(_MAX_TILE // block_half, 1)
    block_hq = min(triton.next_power_of_2(n_q), max_heads)
    block_hk = min(triton.next_power_of_2(max(k.shape[1], 1)), max_heads)
    _rotary_kernel[(t,)](
        q,
        k,
        cos,
        sin,
        n_q,
        k.shape[1],
        half,
        *q.stride(),
        *k.stride(),
        *cos.stride(),
        *sin.stride(),
        BLOCK_HQ=block_hq,
        BLOCK_HK=block_hk,
        BLOCK_HALF=block_half,
        num_warps=4,
    )
    return q, k
