"""EngineConfig: the whole serving recipe as one validated, serialisable object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmctl.agent.engine.errors import InvalidRequest

PINNED_ENV = "LLMCTL_CPU_PINNED"
"""Set to 1 by the agent in a replica it pins to a core set (agent/cpu_slots.py): the engine then runs as many
torch threads as the set has cores."""

DTYPES = ("auto", "float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto", "int8", "fp8")
QUANTIZATIONS = ("int8", "awq", "rtn4")
SPECULATIVE_METHODS = ("none", "ngram", "draft", "self-int4")
MAX_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class EngineConfig:
    """How one engine replica serves one model. Run-time facts (KV blocks, EOS ids) live in EngineInfo."""

    model: str
    dtype: str = "auto"
    device: str = "cpu"
    block_size: int = 16
    num_kv_blocks: int | None = None
    """Exact size of the KV block pool; overrides kv_cache_memory."""
    kv_cache_memory: int | None = None
    """Bytes for the KV pool (all layers, K and V). Default: 1 GiB on CPU."""
    kv_cache_dtype: str = "auto"
    """auto: the model's dtype; int8: per-(token, head) scales; fp8: e4m3 with per-head scales."""
    quantization: str | None = None
    """Quantize a float checkpoint's linears at load: int8 | awq | rtn4 (None: as stored)."""
    quantization_group_size: int | None = None
    """4-bit group size; None: auto (128 where it divides every layer width, else 64, else 32)."""
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    """Context limit; default: the model's own."""
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    num_threads: int | None = None
    """torch intra-op threads on CPU; default: torch's choice."""
    served_model_name: str | None = None
    speculative_method: str = "none"
    """none | ngram (prompt lookup) | draft (speculative_model) | self-int4 (the target's own AWQ copy)."""
    speculative_model: str | None = None
    """The draft model of speculative_method draft: same tokenizer as the target."""
    num_speculative_tokens: int = 4
    """Most tokens drafted per sequence and step; each sequence adapts below it, down to 0."""
    ngram_max: int = 4
    ngram_min: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidRequest(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidRequest(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}"
            )
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise InvalidRequest(
                f"quantization must be one of {', '.join(QUANTIZATIONS)} (or none), got {self.quantization!r}"
            )
        if self.quantization_group_size not in (None, 32, 64, 128):
            raise InvalidRequest(f"quantization group size must be 32, 64 or 128, got {self.quantization_group_size}")
        if self.block_size not in (8, 16, 32, 64):
            raise InvalidRequest(f"block_size must be 8, 16, 32 or 64, got {self.block_size}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be >= 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise InvalidRequest("num_kv_blocks must be >= 1")
        if self.kv_cache_memory is not None and self.kv_cache_memory < 1:
            raise InvalidRequest("kv_cache_memory must be a positive number of bytes")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise InvalidRequest("max_model_len must be >= 1")
        self._check_speculative()

    def _check_speculative(self) -> None:
        if self.speculative_method not in SPECULATIVE_METHODS:
            raise InvalidRequest(
                f"speculative method must be one of {', '.join(SPECULATIVE_METHODS)}, got {self.speculative_method!r}"
            )
        if (self.speculative_method == "draft") != (self.speculative_model is not None):
            raise InvalidRequest("--speculative-model names the draft of --speculative-method draft, and only that")
        if not 1 <= self.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS:
            raise InvalidRequest(
                f"num_speculative_tokens must be in [1, {MAX_SPECULATIVE_TOKENS}], got {self.num_speculative_tokens}"
            )
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise InvalidRequest(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min} and {self.ngram_max}")

    @property
    def speculative(self) -> bool:
        return self.speculative_method != "none"

    def replace(self, **changes: Any) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidRequest(f"unknown engine config keys: {', '.join(sorted(unknown))}")
        return cls(**data)
