"""KV-cache write: scatter each new token's K/V into the paged pool, quantizing on the way in.

Pools are [num_blocks, block_size, KVH, D]; a flat slot is block * block_size + offset. int8 pools get a
per-(token, head) absmax scale computed here and stored in k_scale/v_scale [num_blocks, block_size, KVH];
fp8 (e4m3) pools read a fixed per-head scale k_scale/v_scale [KVH].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmctl.kernels.reference import FP8_E4M3_MAX

QUANT_NONE, QUANT_INT8, QUANT_FP8 = 0, 1, 2


def kv_quant_mode(cache: torch.Tensor) -> int:
    if cache.dtype == torch.int8:
        return QUANT_INT8
    if cache.dtype == torch.float8_e4m3fn:
        return QUANT_FP8
    return QUANT_NONE


def check_kv_pools(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None
) -> int:
    """Validates a K/V pool pair and its scales; returns the quantization mode."""
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be [num_blocks, block_size, KVH, D], got {tuple(k_cache.shape)}")
    if (
        v_cache.shape != k_cache.shape
        or v_cache.dtype != k_cache.dtype
        or v_cache.stride() != k_cache.stride()
    ):
        raise ValueError("v_cache must match k_cache in shape, dtype and strides")
    if k_cache.stride(-1) != 1:
        raise ValueError("k_cache/v_cache must be contiguous in the head dim")
    mode = kv_quant_mode(k_cache)
    for scale, name in ((k_scale, "k_scale"), (v_scale, "v_scale")):
        if mode == QUANT_INT8:
            ok = scale is not None and scale.shape == k_cache.shape[:-1] and scale.is_contiguous()
            want = f"contiguous float32 {tuple(k_cache.shape[:-1])} for an int8 pool"
        elif mode == QUANT_FP8:
            ok = scale is not None and scale.shape == k_cache.shape[2:3] and scale.is_contiguous()
            want = f"contiguous float32 [{k_cache.shape[2]}] for an fp8 pool"
        else:
            ok, want = scale is None, f"None for a {k_cache.dtype} pool"
        if not ok or (scale is not None and (scale.dtype != torch.float32 or scale.device != k_cache.device)):
            raise ValueError(f"{name} must be {want}")
    return mode


@triton.jit
def _write_one(
    x_ptr, cache_ptr, scale_ptr, t, slot, blk, off, heads, dims, mask,
    stride_xt, stride_xh, stride_cb, stride_co, stride_ch,
    KVH: tl.constexpr, QUANT: tl.constexpr, FP8_MAX: tl.constexpr,
):  # fmt: skip
    # x: [BLOCK_H, BLOCK_D] one token's heads
    x = tl.load(x_ptr + t * stride_xt + heads[:, None] * stride_xh + dims[None, :], mask=mask, other=0.0)
    dst = cache_ptr + blk * stride_cb + off * stride_co + heads[:, None] * stride_ch + dims[None, :]
    if QUANT == 1:
        xf = x.to(tl.float32)
        s = tl.max(tl.abs(xf), axis=1) / 127.0  # [BLOCK_H]
        inv = 1.0 / tl.where(s > 0, s, 1.0)  # an all-zero row has s = 0 and codes 0
        y = xf * inv[:, None]
        # Round half away from zero, like the reference (no libdevice needed under the interpreter).
        y = tl.where(y >= 0, tl.floor(y + 0.5), -tl.floor(-y + 0.5))
        y = tl.minimum(tl.maximum(y, -127.0), 127.0)
        tl.store(dst, y.to(tl.int8), mask=mask)
        tl.store(scale_ptr + slot * KVH + heads, s, mask=heads < KVH)
    elif QUANT == 2:
        s = tl.load(scale_ptr + heads, mask=heads < KVH, other=1.0)
        y = x.to(tl.float32) / s[:, None]
        y = tl.minimum(tl.maximum(y, -FP8_MAX), FP8_MAX)
        tl.store(dst, y.to(cache_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(dst, x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_co, stride_ch,
    BLOCK_SIZE: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, QUANT: tl.constexpr, FP8_MAX: tl.constexpr,
):  # fmt: skip
    # One program per token: all its KV heads at once, so int8's per-head absmax is a row reduction.
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    blk = slot // BLOCK_SIZE
    off = slot % BLOCK_SIZE
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < KVH) & (dims[None, :] < D)
    _write_one(k_ptr, k_cache_ptr, k_scale_ptr, t, slot, blk, off, heads, dims, mask,
               stride_kt, stride_kh, stride_cb, stride_co, stride_ch, KVH, QUANT, FP8_MAX)  # fmt: skip
    _write_one(v_ptr, v_cache_ptr, v_scale_ptr, t, slot, blk, off, heads, dims, mask,
               stride_vt, stride_vh, stride_cb, stride_co, stride_ch, KVH, QUANT, FP8_MAX)  # fmt: skip


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Scatter k/v [T, KVH, D] into the pools at flat slots [T]; same contract as reference.write_kv."""
    mode = check_kv_pools(k_cache, v_cache, k_scale, v_scale)
    num_blocks, block_size, kvh, d = k_cache.shape
    if k.dim() != 3 or k.shape[1:] != (kvh, d):
        raise ValueError(f"k must be [T, {kvh}, {d}] to match the pool, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v must be contiguous in the head dim")
    if slot_mapping.shape != (k.shape[0],) or slot_mapping.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"slot_mapping must be int64 [{k.shape[0]}], got {slot_mapping.dtype} "
                         f"{tuple(slot_mapping.shape)}")  # fmt: skip
    if k.shape[0] == 0:
        return
    # Unused scale pointers still need a tensor argument.
    ks = k_scale if k_scale is not None else k_cache
    vs = v_scale if v_scale is not None else v_cache
    _write_kv_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, ks, vs, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        BLOCK_SIZE=block_size, KVH=kvh, D=d,
        BLOCK_H=triton.next_power_of_2(kvh), BLOCK_D=triton.next_power_of_2(d),
        QUANT=mode, FP8_MAX=FP8_E4M3_MAX,
        num_warps=4 if kvh * d >= 1024 else 1,
    )  # fmt: skip
