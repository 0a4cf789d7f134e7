"""C++ CPU kernels (ops.cpp) for the engine's memory-bound ops: fused add + RMSNorm, in-place rotary,
silu-and-mul, and paged decode / prefill attention that read K/V straight from the block pool.

Built on first use with torch's C++ extension loader (gcc, ninja), tuned for this CPU (-march=native), and
cached under ~/.cache/llmctl/torch_extensions (LLMCTL_EXTENSIONS_DIR overrides) by a key of the source, torch
version and CPU flags, so a second process loads it in well under a second. `available()` is False where
the build fails (no compiler) or LLMCTL_CPU_KERNELS=0; the dispatch then serves the torch reference, which
stays the oracle these kernels are tested against. Same signatures and results as kernels/reference.py.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

from llmctl.kernels.metadata import DecodeMetadata, PrefillMetadata

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("ops.cpp")
# Fast math without assuming finite values: the kernels use -inf as the running max of an empty softmax.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
          "-fassociative-math", "-freciprocal-math", "-fopenmp"]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Activation (and KV pool) dtypes the kernels take; anything else goes to the reference."""
PREFILL_TILE = 32
"""Positions per prefill task: (positions x query heads of one KV head) rows share each K/V chunk read."""


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_dir() -> Path:
    key = hashlib.sha256(
        SOURCE.read_bytes() + torch.__version__.encode() + " ".join(CFLAGS).encode() + _cpu_flags().encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("LLMCTL_EXTENSIONS_DIR", Path.home() / ".cache" / "llmctl" / "torch_extensions"))
    path = root / f"llmctl_cpu_{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def available() -> bool:
    """Build (or load the cached build of) the extension once per process; False if it cannot be had."""
    if os.environ.get("LLMCTL_CPU_KERNELS", "1") == "0":
        return False
    try:
        build = _build_dir()
        library = build / "llmctl_cpu.so"
        if library.exists():  # built before for this source, torch and CPU: skip the toolchain entirely
            torch.ops.load_library(str(library))
        else:
            from torch.utils.cpp_extension import load

            load(name="llmctl_cpu", sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                 build_directory=str(build), is_python_module=False, verbose=False)
    except Exception as exc:  # no compiler, no ninja, a broken toolchain: the reference still serves
        log.warning("llmctl C++ CPU kernels unavailable, using the torch reference: %s", exc)
        return False
    return True


def _ops():
    return torch.ops.llmctl_cpu


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual) normalised, and the new residual; x [..., hidden]. Inputs are not modified."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    r2 = residual.reshape(-1, shape[-1]).contiguous() if residual is not None else None
    out = torch.empty_like(x2)
    new_residual = torch.empty_like(x2) if residual is not None else None
    _ops().rms_norm(x2, r2, weight.contiguous(), eps, out, new_residual)
    return out.view(shape), (new_residual.view(shape) if new_residual is not None else x)


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox rotary, IN PLACE (as the Triton kernel): q [T, H, D], k [T, KVH, D] may be row-strided views of a
    fused qkv tensor; each is rotated where it lies and returned."""
    cos, sin = cos.contiguous(), sin.contiguous()
    for x in (q, k):
        if x.stride(2) != 1 or x.stride(1) != x.shape[2]:
            raise ValueError(f"rotary needs rows of contiguous heads, got strides {x.stride()}")
        _ops().rotary_embedding(x, x.stride(0), x.shape[1], x.shape[2], cos, sin)
    return q, k


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: silu(gate) * up."""
    gate_up = gate_up.contiguous()
    out = torch.empty(gate_up.shape[0], gate_up.shape[1] // 2, dtype=gate_up.dtype)
    _ops().silu_and_mul(gate_up, out)
    return out


def paged_attention_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: DecodeMetadata, scale: float
) -> torch.Tensor:
    """One query token per sequence over its paged context. q: [B, H, D] -> [B, H, D]."""
    out = torch.empty_like(q)
    _ops().paged_attention_decode(
        q.contiguous(), k_cache, v_cache, meta.block_tables, meta.context_lens, scale, out
    )
    return out


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: PrefillMetadata, scale: float
) -> torch.Tensor:
    """Varlen causal prefill over the paged context. q [T, H, D] -> [T, H, D]."""
    out = torch.empty_like(q)
    _ops().prefill_attention(
        q.contiguous(), k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q, meta.context_starts, scale,
        PREFILL_TILE, out,
    )
    return out
