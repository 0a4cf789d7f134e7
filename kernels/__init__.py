"""The only way the engine reaches an op. Triton kernels are chosen for CUDA tensors once they exist;
everything else runs the torch reference. `LLMCTL_KERNELS=reference|triton` forces one (read once, here).
"""

from __future__ import annotations

import os

from kernels import reference

BACKEND = os.environ.get("LLMCTL_KERNELS", "auto")
if BACKEND not in ("auto", "reference", "triton"):
    raise ValueError(f"LLMCTL_KERNELS must be auto, reference or triton, got {BACKEND!r}")

rms_norm = reference.rms_norm
rotary_embedding = reference.rotary_embedding
silu_and_mul = reference.silu_and_mul
write_kv = reference.write_kv
paged_attention_decode = reference.paged_attention_decode
prefill_attention = reference.prefill_attention
linear = reference.linear
prepack_linear_weight = reference.prepack_linear_weight

__all__ = [
    "BACKEND",
    "linear",
    "paged_attention_decode",
    "prepack_linear_weight",
    "prefill_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "write_kv",
]
