"""The only way the engine reaches an op.

Triton kernels run for CUDA tensors; on CPU the C++ kernels of kernels/cpu (built on first use) run where
they apply (float tensors, an unquantized KV pool), the torch reference everywhere else. `LLMCTL_KERNELS=
reference` or `=triton` forces one (read once, here; `triton` on CPU tensors needs TRITON_INTERPRET=1). Ops
with no Triton or C++ kernel (linear, weight prepacking) always use the reference.
"""

from __future__ import annotations

import functools
import os

import torch

from llmctl.kernels import cpu, quant_cpu, quant_reference, reference

BACKEND = os.environ.get("LLMCTL_KERNELS", "auto")
if BACKEND not in ("auto", "reference", "triton"):
    raise ValueError(f"LLMCTL_KERNELS must be auto, reference or triton, got {BACKEND!r}")

TRITON_OPS = (
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "write_kv",
    "paged_attention_decode",
    "prefill_attention",
    "w8a16_linear",
    "awq_linear",
)


def _reference_op(name: str):
    return getattr(reference, name, None) or getattr(quant_reference, name)


@functools.cache
def _triton_module():
    from llmctl.kernels import triton as triton_kernels

    return triton_kernels


def _triton_op(name: str):
    module = _triton_module()
    return getattr(module, name, None) or _reference_op(name)


CPU_OPS = ("rms_norm", "rotary_embedding", "silu_and_mul", "paged_attention_decode", "prefill_attention")


def _cpu_op(name: str):
    """The C++ kernel for CPU float tensors (attention: over an unquantized pool of q's dtype), the reference
    otherwise. The extension is built or loaded on the first call, not at import."""
    ref = _reference_op(name)
    fast = getattr(cpu, name)
    dtypes = cpu.DTYPES

    if name in ("paged_attention_decode", "prefill_attention"):
        @functools.wraps(ref)
        def attention(q, k_cache, v_cache, meta, scale, k_scale=None, v_scale=None):
            if (k_scale is None and v_scale is None and q.dtype in dtypes and k_cache.dtype == q.dtype
                    and not q.is_cuda and cpu.available()):
                return fast(q, k_cache, v_cache, meta, scale)
            return ref(q, k_cache, v_cache, meta, scale, k_scale, v_scale)

        return attention

    @functools.wraps(ref)
    def op(first, *args, **kwargs):
        if first.dtype in dtypes and not first.is_cuda and cpu.available():
            return fast(first, *args, **kwargs)
        return ref(first, *args, **kwargs)

    return op


def _bind(name: str):
    if BACKEND == "reference" or (name not in TRITON_OPS and name not in CPU_OPS):
        return _reference_op(name)
    if BACKEND == "triton":
        return _triton_op(name)
    host = _cpu_op(name) if name in CPU_OPS else _reference_op(name)
    if not torch.cuda.is_available():  # no GPU in this process: skip the per-call device check entirely
        return host

    @functools.wraps(host)
    def dispatch(first, *args, **kwargs):
        return _triton_op(name)(first, *args, **kwargs) if first.is_cuda else host(first, *args, **kwargs)

    return dispatch


rms_norm = _bind("rms_norm")
rotary_embedding = _bind("rotary_embedding")
silu_and_mul = _bind("silu_and_mul")
write_kv = _bind("write_kv")
paged_attention_decode = _bind("paged_attention_decode")
prefill_attention = _bind("prefill_attention")
w8a16_linear = _bind("w8a16_linear")
awq_linear = _bind("awq_linear")
# Quantized linears in the CPU runtime layout a layer converts its stored tensors to once, at load
# (finalize); CUDA layers keep the stored layout and the Triton ops above.
w8a16_packable = quant_cpu.w8a16_packable
prepack_w8a16 = quant_cpu.prepack_w8a16
w8a16_linear_packed = quant_cpu.w8a16_linear
awq_packable = quant_cpu.awq_packable
prepack_awq = quant_cpu.prepack_awq
awq_linear_packed = quant_cpu.awq_linear
# Dense bf16 weights on CPU: llmctl's blocked layout, read in place by the C++ kernel (faster than oneDNN's packed
# GEMM up to ~128 rows, where decode lives; 4-7% slower on prefill's thousands of rows, see cpu.pack_bf16), or
# oneDNN's (`LLMCTL_DENSE_LINEAR=onednn`, for side-by-side measurements; and always under a forced backend).
DENSE_LINEAR = os.environ.get("LLMCTL_DENSE_LINEAR", "llmctl")
if DENSE_LINEAR not in ("llmctl", "onednn"):
    raise ValueError(f"LLMCTL_DENSE_LINEAR must be llmctl or onednn, got {DENSE_LINEAR!r}")


def prepack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """A dense [out, in] weight in the layout its CPU matmul reads fastest (same values, not saveable): llmctl's
    blocked bf16 layout (3-D) where the C++ kernel takes it and has AVX512-BF16, else oneDNN's packed layout where oneDNN has one,
    else the weight as it is."""
    if (BACKEND == "auto" and DENSE_LINEAR == "llmctl" and weight.device.type == "cpu"
            and weight.dtype == torch.bfloat16 and weight.dim() == 2 and cpu.quant_packable(*reversed(weight.shape))
            and cpu.available() and cpu.blocked_bf16_preferred()):
        return cpu.pack_bf16(weight)
    return reference.prepack_linear_weight(weight)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ weight^T (+ bias), for a weight as prepack_linear_weight left it."""
    if weight.dim() == 3:
        return cpu.quant_linear(x, weight, None, 0, bias)
    return reference.linear(x, weight, bias)


# Every decoder layer of a step in one C++ call, for models whose layers all fit it (see cpu.decoder_layers).
DecoderPlan = cpu.DecoderPlan
LinearArgs = cpu.LinearArgs
LINEAR_ONEDNN, LINEAR_DENSE, LINEAR_INT8, LINEAR_INT4, LINEAR_BF16 = (
    cpu.LINEAR_ONEDNN, cpu.LINEAR_DENSE, cpu.LINEAR_INT8, cpu.LINEAR_INT4, cpu.LINEAR_BF16
)
decoder_layers = cpu.decoder_layers
in_huge_pages = cpu.in_huge_pages
CPU_DTYPES = cpu.DTYPES


def decoder_layers_available(device: torch.device | str) -> bool:
    """Whether a model on `device` may run its decoder layers through decoder_layers: CPU, the auto backend
    (LLMCTL_KERNELS unset) and the C++ kernels built; LLMCTL_FUSED_LAYERS=0 turns it off."""
    return (torch.device(device).type == "cpu" and BACKEND == "auto"
            and os.environ.get("LLMCTL_FUSED_LAYERS", "1") != "0" and cpu.available())

__all__ = [
    "BACKEND",
    "DecoderPlan",
    "LinearArgs",
    "decoder_layers",
    "decoder_layers_available",
    "linear",
    "paged_attention_decode",
    "prefill_attention",
    "prepack_linear_weight",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "awq_linear",
    "awq_linear_packed",
    "awq_packable",
    "prepack_awq",
    "prepack_w8a16",
    "w8a16_linear",
    "w8a16_linear_packed",
    "w8a16_packable",
    "write_kv",
]
