"""The only way the engine reaches an op.

Triton kernels run for CUDA tensors, the torch reference everywhere else. `LLMCTL_KERNELS=reference`
or `=triton` forces one (read once, here; `triton` on CPU tensors needs TRITON_INTERPRET=1). Ops with
no Triton kernel (linear, weight prepacking) always use the reference.
"""

from __future__ import annotations

import functools
import os

from llmctl.kernels import quant_reference, reference

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


def _by_device(name: str):
    ref = _reference_op(name)

    @functools.wraps(ref)
    def dispatch(first, *args, **kwargs):
        if first.is_cuda:
            return _triton_op(name)(first, *args, **kwargs)
        return ref(first, *args, **kwargs)

    return dispatch


def _bind(name: str):
    if name not in TRITON_OPS or BACKEND == "reference":
        return _reference_op(name)
    if BACKEND == "triton":
        return _triton_op(name)
    import torch

    # No GPU in this process: skip the per-call device check entirely.
    return _by_device(name) if torch.cuda.is_available() else _reference_op(name)


rms_norm = _bind("rms_norm")
rotary_embedding = _bind("rotary_embedding")
silu_and_mul = _bind("silu_and_mul")
write_kv = _bind("write_kv")
paged_attention_decode = _bind("paged_attention_decode")
prefill_attention = _bind("prefill_attention")
w8a16_linear = _bind("w8a16_linear")
awq_linear = _bind("awq_linear")
linear = reference.linear
prepack_linear_weight = reference.prepack_linear_weight

__all__ = [
    "BACKEND",
    "linear",
    "paged_attention_decode",
    "prefill_attention",
    "prepack_linear_weight",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "awq_linear",
    "w8a16_linear",
    "write_kv",
]
