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
import mmap
import os
import platform
from dataclasses import dataclass
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


# -- weight-only quantized linears (AVX512-BF16 or AVX2; see ops.cpp for the packed layouts) ----------------

QUANT_BLOCK = 16
"""Output columns per packed block: a layer's output width must be a multiple of it."""


@functools.cache
def quant_linear_available() -> bool:
    """Whether this build has llmctl's linear over its packed layouts: on AVX512-BF16 with bf16 dot products, on
    AVX2 (with FMA and F16C) with the weights unpacked to fp32."""
    return available() and bool(_ops().quant_linear_available())


@functools.cache
def blocked_bf16_preferred() -> bool:
    """Whether dense bf16 weights go to llmctl's blocked layout rather than torch's path: with AVX512-BF16, where
    it measured faster than oneDNN's packed layout up to ~128 rows and even from there; and on AVX2 where oneDNN
    has no bf16 packing (no AVX-NE-CONVERT), as on an AVX2-only EPYC, where F.linear's bf16 GEMM ran 1.4x slower
    at one row and 4.3-4.9x slower from 32 rows than the AVX2 kernel (`python benchmarks/bench_dense_layout.py`)."""
    if not quant_linear_available():
        return False
    from llmctl.kernels import reference

    return int(_ops().quant_linear_level()) == 2 or not reference.onednn_packs(torch.bfloat16)


def quant_packable(in_features: int, out_features: int, group_size: int | None = None) -> bool:
    """Whether pack_int8 / pack_int4 take a layer of these widths (group_size: the 4-bit groups)."""
    groups_ok = group_size is None or (group_size % 8 == 0 and in_features % group_size == 0)
    return out_features % QUANT_BLOCK == 0 and in_features % 2 == 0 and groups_ok


def _blocked(w: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [N/16, K/2, 32]: element 2j + t of row (b, p) is w[16b + j, 2p + t]."""
    n, k = w.shape
    return w.reshape(n // QUANT_BLOCK, QUANT_BLOCK, k // 2, 2).permute(0, 2, 1, 3).reshape(n // QUANT_BLOCK, k // 2, 32)


_NO_SCALES = torch.empty(0)
HUGE_PAGE = 2 << 20


def in_huge_pages(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors`, one after another (64-byte aligned) in one anonymous mapping advised
    MADV_HUGEPAGE, so that the kernel backs it with 2 MiB pages where transparent huge pages are on (`always`
    or `madvise`). Decode streams every weight once per step; on 4 KiB pages each page costs a TLB miss and
    the hardware prefetchers stop at every page boundary. The tensors are returned unchanged where the platform
    has no MADV_HUGEPAGE, or with LLMCTL_HUGE_PAGES=0 (for side-by-side measurements). The mapping lives as long
    as any of the copies (torch.frombuffer holds it)."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if not tensors or advice is None or os.environ.get("LLMCTL_HUGE_PAGES", "1") == "0":
        return tensors
    sizes = [-(-t.nbytes // 64) * 64 for t in tensors]
    length = -(-(sum(sizes) + HUGE_PAGE) // HUGE_PAGE) * HUGE_PAGE  # room to start on a 2 MiB boundary
    arena = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena.madvise(advice)  # before the first touch: the pages are faulted in huge
    raw = torch.frombuffer(arena, dtype=torch.uint8)
    offset = -raw.data_ptr() % HUGE_PAGE
    copies = []
    for t, size in zip(tensors, sizes, strict=True):
        copy = raw[offset:offset + t.nbytes].view(t.dtype).view(t.shape)
        copy.copy_(t)
        copies.append(copy)
        offset += size
    return copies


def pack_int8(w_int8: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_int8 [N, K], scales [N]) -> (packed [N/16, K/2, 32] int8, scales [N] fp32)."""
    return _blocked(w_int8).contiguous(), scales.float().contiguous()


def pack_bf16(w: torch.Tensor) -> torch.Tensor:
    """A dense bf16 weight [N, K] -> the same values in the blocked layout [N/16, K/2, 32] (quant_linear reads it
    in place, with no dequantisation). Against oneDNN's own packed layout on this box (`python
    benchmarks/bench_quant_linear.py`), per decoder layer from DRAM: 1.3-1.5x at M = 1 to 4 (more bytes in flight:
    one sequential stream per task, prefetched ahead), 1.1-1.2x at 16 to 64, 0.93-0.96x from 256 rows on."""
    return _blocked(w.to(torch.bfloat16)).contiguous()


def pack_int4(
    codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ as codes [N, K] and zeros, scales [K/g, N] (w = (code - zero) * scale) -> (packed [N/16, K/2, 16]
    uint8, scales and zeros [2, K/g, N] fp16): AWQ's scales as stored, zeros exact."""
    b = _blocked(codes.to(torch.uint8))
    packed = (b[..., :16] | (b[..., 16:] << 4)).contiguous()
    return packed, torch.stack([scales.to(torch.float16), zeros.to(torch.float16)])


def quant_linear(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor | None, group_size: int = 0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., K] bf16 @ the packed weight (pack_bf16's with no scales, pack_int8's with group_size 0, else
    pack_int4's) (+ bias) -> [..., N] bf16."""
    k = packed.shape[1] * 2
    n = packed.shape[0] * QUANT_BLOCK
    if x.dtype != torch.bfloat16 or x.shape[-1] != k:
        raise ValueError(f"x must be bfloat16 [..., {k}], got {x.dtype} {tuple(x.shape)}")
    x2 = x.reshape(-1, k).contiguous()
    out = torch.empty(x2.shape[0], n, dtype=torch.bfloat16)
    if bias is not None:
        bias = bias.to(torch.bfloat16).contiguous()
    _ops().quant_linear(x2, packed, _NO_SCALES if scales is None else scales, group_size, bias, out)
    return out.view(*x.shape[:-1], n)


# -- every decoder layer of a step in one call (ops.cpp decoder_layers) ----------------------------------

LINEAR_ONEDNN, LINEAR_DENSE, LINEAR_INT8, LINEAR_INT4, LINEAR_BF16 = 0, 1, 2, 3, 4
"""How decoder_layers runs a linear: a oneDNN-packed dense weight, a plain one (F.linear), llmctl's int8 or
4-bit layout, or llmctl's blocked bf16 layout (quant_linear)."""


@dataclass
class LinearArgs:
    weight: torch.Tensor
    scales: torch.Tensor | None
    bias: torch.Tensor | None
    kind: int
    group_size: int = 0


@dataclass
class DecoderPlan:
    """A Llama-family model's per-layer tensors, flattened once (at finalize) for decoder_layers: per layer
    the input and post-attention norm weights, and the qkv, o, gate_up and down linears in that order."""

    norms: list[torch.Tensor]
    linears: list[LinearArgs]
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    scale: float

    def __post_init__(self) -> None:
        if len(self.linears) != 2 * len(self.norms):
            raise ValueError(f"{len(self.norms)} norms need {2 * len(self.norms)} linears, got {len(self.linears)}")
        self._weights = [a.weight for a in self.linears]
        self._scales = [a.scales for a in self.linears]
        self._biases = [a.bias for a in self.linears]
        self._kinds = [a.kind for a in self.linears]
        self._groups = [a.group_size for a in self.linears]


def decoder_layers(
    x: torch.Tensor,
    plan: DecoderPlan,
    k_caches: list[torch.Tensor],
    v_caches: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_mapping: torch.Tensor,
    decode: DecodeMetadata | None,
    prefill: PrefillMetadata | None,
    num_decodes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder loop of LlamaModel.forward over x [T, hidden] (decode rows first): (x, residual) after the
    last layer, the same values as running the layers op by op. Unquantized KV pools in x's dtype."""
    return _ops().decoder_layers(
        x.contiguous(), plan.norms, plan._weights, plan._scales, plan._biases, plan._kinds, plan._groups,
        k_caches, v_caches, cos.contiguous(), sin.contiguous(), slot_mapping.long(),
        decode.block_tables if decode is not None else None,
        decode.context_lens if decode is not None else None,
        prefill.block_tables if prefill is not None else None,
        prefill.cu_seqlens_q if prefill is not None else None,
        prefill.context_starts if prefill is not None else None,
        num_decodes, plan.heads, plan.kv_heads, plan.head_dim, plan.eps, plan.scale, PREFILL_TILE,
    )
