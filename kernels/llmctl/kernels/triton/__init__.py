"""Triton kernels, one file per family; each public function has the same signature as its
counterpart in kernels/reference.py. Importing this package imports triton."""

from llmctl.kernels.triton.activation import silu_and_mul  # noqa: F401
from llmctl.kernels.triton.kv_cache import write_kv  # noqa: F401
from llmctl.kernels.triton.norm_rope import rms_norm, rotary_embedding  # noqa: F401
from llmctl.kernels.triton.paged_attention import paged_attention_decode  # noqa: F401
from llmctl.kernels.triton.prefill_attention import prefill_attention  # noqa: F401
from llmctl.kernels.triton.quant_matmul import awq_linear, w8a16_linear  # noqa: F401
