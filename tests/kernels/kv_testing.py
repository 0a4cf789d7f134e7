"""Shared by the KV-cache and attention kernel tests: random (optionally quantized) KV pools, poisoned
allocations, a relative-error check that prints the worst elements, and fixes for two Triton 3.9
interpreter bugs the compiled GPU path does not have, so the interpreter runs the kernels as written:

- `tl.dot` on bfloat16 operands multiplies their raw uint16 bit patterns (np.matmul on the storage);
- float32 -> float8e4nv casts round wrongly when the mantissa carries into the exponent (1.97 -> 1.0),
  where the GPU's cvt.rn.satfinite rounds to nearest even (2.0), like torch.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter as _interp  # noqa: E402

from llmctl.kernels import reference  # noqa: E402
from tests.kernels.closeness import assert_close as assert_rel_close  # noqa: E402, F401
from tests.kernels.closeness import rel_err  # noqa: E402, F401

QUANTIZED = (torch.int8, torch.float8_e4m3fn)
KV_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.float8_e4m3fn]
# Output tolerance by query dtype (rel. L2 error against fp64).
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}


def query_dtype(cache_dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16/fp32 pools attend in their own dtype; quantized pools with bf16 queries."""
    return torch.bfloat16 if cache_dtype in QUANTIZED else cache_dtype


def kv_pool(num_blocks: int, block_size: int, kvh: int, d: int, dtype: torch.dtype):
    """Random pools in `dtype` -> (k_cache, v_cache, k_scale, v_scale, k_float, v_float), the float pools
    being the unquantized fp32 values the caches were made from."""
    shape = (num_blocks, block_size, kvh, d)
    kf, vf = torch.randn(shape) * 2, torch.randn(shape)
    if dtype not in QUANTIZED:
        k, v = kf.to(dtype), vf.to(dtype)
        return k, v, None, None, k.float(), v.float()
    out = []
    for x in (kf, vf):
        flat = x.view(-1, kvh, d)
        head_scale = flat.abs().amax(dim=(0, 2)) / 300.0 if dtype == torch.float8_e4m3fn else None
        codes, token_scale = reference.quantize_kv(flat, dtype, head_scale)
        scale = token_scale.view(num_blocks, block_size, kvh) if token_scale is not None else head_scale
        out.append((codes.view(shape), scale))
    (k, ks), (v, vs) = out
    return k, v, ks, vs, kf, vf


def dequantized(cache: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The fp64 values a (possibly quantized) pool holds."""
    if cache.dtype not in QUANTIZED:
        return cache.double()
    return reference.dequantize_kv(cache, scale).double()


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Floating buffers the wrappers allocate (outputs, split-K partials) start as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_fill(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_fill(empty_like(*a, **k)))


_create_dot = _interp.InterpreterBuilder.create_dot
_create_fp_to_fp = _interp.InterpreterBuilder.create_fp_to_fp


def _bf16_as_fp32(h: _interp.TensorHandle) -> _interp.TensorHandle:
    if h.dtype.scalar != tl.bfloat16:
        return h
    return _interp.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)


def _create_dot_fixed(self, a, b, d, input_precision, max_num_imprecise_acc):
    return _create_dot(self, _bf16_as_fp32(a), _bf16_as_fp32(b), d, input_precision, max_num_imprecise_acc)


def _create_fp_to_fp_fixed(self, src, dst_type, rounding_mode):
    if dst_type.scalar == tl.float8e4nv and src.dtype.scalar in (tl.float32, tl.float16):
        data = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.float8_e4m3fn).view(torch.uint8)
        return _interp.TensorHandle(data.numpy(), dst_type.scalar)
    return _create_fp_to_fp(self, src, dst_type, rounding_mode)


def fix_interpreter() -> None:
    """Idempotent; has no effect on compiled (GPU) kernels."""
    _interp.InterpreterBuilder.create_dot = _create_dot_fixed
    _interp.InterpreterBuilder.create_fp_to_fp = _create_fp_to_fp_fixed


fix_interpreter()
