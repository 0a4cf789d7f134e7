"""What limits a deployment, and the techniques that may lift it, in order of effort (no SQL, no I/O).

The catalog follows the source article's order of effort: engine knobs (prefix caching, chunked prefill,
max_num_seqs, max_num_batched_tokens, KV cache size), KV cache int8/fp8, int8 weights, 4-bit AWQ
weights, speculative decoding, a distilled student. Each technique proposes one change to the current
best engine config (EngineConfig fields), or says why it does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

BOTTLENECKS = ("weights-memory", "kv-memory", "prefill", "decode", "queueing")

QUEUEING_TTFT_SPREAD = 4.0
"""TTFT p95 above this many times TTFT p50: most of the tail waits for admission, not for compute."""
PREFILL_TTFT_OVER_TPOT = 10.0
"""TTFT p95 above this many decode steps (TPOT p95): the prompt's prefill dominates the latency."""

MAX_NUM_SEQS_CAP = 512
MAX_NUM_BATCHED_TOKENS_CAP = 16384

# Bytes per linear weight after quantizing, from docs/quantization.md (linear bytes / fp16 x 2, scales
# included): int8 0.503 x 2, 4-bit AWQ at group size 64 0.270 x 2.
QUANTIZED_BYTES_PER_WEIGHT = {"int8": 1.006, "awq": 0.54, "rtn4": 0.54}
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}


@dataclass(frozen=True)
class Bottleneck:
    name: str
    why: str
    """One sentence with the numbers that decided it."""


def find_bottleneck(goal: str, metrics: dict) -> Bottleneck:
    """Name what limits the deployment from its baseline metrics and the goal. The first rule that holds:

    - goal "memory": weights-memory when weights_bytes >= kv_bytes, else kv-memory (a missing size counts
      as 0);
    - preemptions > 0: kv-memory (the KV pool is too small for the work admitted);
    - ttft_p95 > 4 x ttft_p50: queueing (the tail waits for admission);
    - ttft_p95 > 10 x tpot_p95: prefill (a first token costs more than ten decode steps);
    - otherwise decode.
    Rules whose metrics are missing (None) are skipped.
    """
    if goal == "memory":
        weights, kv = metrics.get("weights_bytes") or 0, metrics.get("kv_bytes") or 0
        sizes = f"weights {_mib(weights)} vs KV cache {_mib(kv)}"
        if weights >= kv:
            return Bottleneck("weights-memory", f"the weights take the most memory ({sizes})")
        return Bottleneck("kv-memory", f"the KV cache takes the most memory ({sizes})")
    preemptions = metrics.get("preemptions") or 0
    if preemptions > 0:
        return Bottleneck("kv-memory", f"the baseline preempted {preemptions:g} sequence(s): the KV pool "
                                       "is too small for the work the engine admits")
    p50, p95, tpot = metrics.get("ttft_p50_ms"), metrics.get("ttft_p95_ms"), metrics.get("tpot_p95_ms")
    if p50 is not None and p95 is not None and p95 > QUEUEING_TTFT_SPREAD * p50:
        return Bottleneck("queueing", f"TTFT p95 {p95:.0f} ms is {p95 / p50:.1f}x its p50 {p50:.0f} ms "
                                      f"(> {QUEUEING_TTFT_SPREAD:g}x): requests wait to be admitted")
    if p95 is not None and tpot is not None and p95 > PREFILL_TTFT_OVER_TPOT * tpot:
        return Bottleneck("prefill", f"TTFT p95 {p95:.0f} ms is {p95 / tpot:.1f}x TPOT p95 {tpot:.1f} ms "
                                     f"(> {PREFILL_TTFT_OVER_TPOT:g}x): prompt processing dominates")
    parts = [f"TTFT p95 {p95:.0f} ms" if p95 is not None else None,
             f"TPOT p95 {tpot:.1f} ms" if tpot is not None else None]
    seen = ", ".join(p for p in parts if p) or "no latency reported"
    return Bottleneck("decode", f"no preemption, queueing or prefill dominance ({seen}): "
                                "generating tokens is the limit")


@dataclass(frozen=True)
class Context:
    """What a technique needs to know besides the engine config."""

    workload: dict
    """OptimizeOptions.workload."""
    kv_cache_bytes: int | None
    """The current best's KV pool bytes (its bench "server" object)."""
    kv_blocks_total: int | None
    linear_weight_bytes: int | None
    goal: str
    bottleneck: str


@dataclass(frozen=True)
class Proposal:
    change: dict | None
    """EngineConfig fields to set; None when the technique does not apply."""
    why_not: str | None = None


@dataclass(frozen=True)
class Technique:
    name: str
    effort: int
    """Order of effort, lowest first."""
    addresses: frozenset[str]
    changes_numerics: bool
    """Whether a quality eval must pass before the speed is measured."""
    what: str
    _propose: Callable[[dict, Context], Proposal] = field(repr=False, compare=False)

    def propose(self, config: dict, context: Context) -> Proposal:
        return self._propose(config, context)


def _change(config: dict, **fields: object) -> Proposal:
    """Only the fields that differ from config; nothing left: does not apply."""
    change = {k: v for k, v in fields.items() if config.get(k) != v}
    if not change:
        return Proposal(None, "the config already has " + ", ".join(f"{k}={v!r}" for k, v in fields.items()))
    return Proposal(change)


def _switch_on(key: str, label: str) -> Callable[[dict, Context], Proposal]:
    def propose(config: dict, context: Context) -> Proposal:
        if config.get(key, True):
            return Proposal(None, f"{label} is already on")
        return _change(config, **{key: True})
    return propose


def _double(key: str, cap: int, enough: Callable[[dict, dict], str | None]):
    def propose(config: dict, context: Context) -> Proposal:
        current = config[key]
        if current >= cap:
            return Proposal(None, f"{key} is already {current} (the cap is {cap})")
        reason = enough(config, context.workload)
        if reason:
            return Proposal(None, reason)
        return _change(config, **{key: min(2 * current, cap)})
    return propose


def _seqs_enough(config: dict, workload: dict) -> str | None:
    requests = workload.get("requests")
    if requests is not None and config["max_num_seqs"] >= requests:
        return f"max_num_seqs {config['max_num_seqs']} already admits all {requests} requests of the workload"
    return None


def _batched_tokens_enough(config: dict, workload: dict) -> str | None:
    requests, longest = workload.get("requests"), _longest_prompt(workload)
    if requests is not None and longest is not None and config["max_num_batched_tokens"] >= requests * longest:
        return (f"max_num_batched_tokens {config['max_num_batched_tokens']} already takes every prompt of "
                f"the workload in one step ({requests} x {longest} tokens)")
    return None


def _high(bounds: object) -> int | None:
    if isinstance(bounds, int | float):
        return int(bounds)
    if isinstance(bounds, list | tuple) and bounds:
        return int(bounds[-1])
    return None


def _longest_prompt(workload: dict) -> int | None:
    high = _high(workload.get("input_len"))
    return None if high is None else int(workload.get("shared_prefix_len") or 0) + high


def _current_blocks(config: dict, context: Context) -> int | None:
    return context.kv_blocks_total or config.get("num_kv_blocks")


def _kv_cache_size(config: dict, context: Context) -> Proposal:
    if context.goal == "memory":
        return Proposal(None, "growing the KV pool does not save memory")
    requests, longest = context.workload.get("requests"), _longest_prompt(context.workload)
    output = _high(context.workload.get("output_len"))
    if requests is None or longest is None or output is None:
        return Proposal(None, "the workload does not say how many tokens its requests hold")
    block_size = config.get("block_size", 16)
    needed = min(requests, config["max_num_seqs"]) * math.ceil((longest + output) / block_size)
    current = _current_blocks(config, context)
    if current is not None and current >= needed:
        return Proposal(None, f"the KV pool already holds {current} blocks; the workload needs {needed} at once")
    target = needed if current is None else max(needed, 2 * current)
    return _change(config, num_kv_blocks=target, kv_cache_memory=None)


def _kv_quant(dtype: str) -> Callable[[dict, Context], Proposal]:
    def propose(config: dict, context: Context) -> Proposal:
        current = config.get("kv_cache_dtype", "auto")
        if current != "auto":
            return Proposal(None, f"the KV cache is already {current}")
        if context.goal == "memory":
            # Save memory: the same tokens in fewer bytes.
            blocks = _current_blocks(config, context)
            if blocks is None:
                return Proposal(None, "the current KV pool's size in blocks is unknown")
            return _change(config, kv_cache_dtype=dtype, num_kv_blocks=blocks, kv_cache_memory=None)
        pool = context.kv_cache_bytes or config.get("kv_cache_memory")
        if not pool:
            return Proposal(None, "the current KV pool's size in bytes is unknown (no server metrics)")
        # More tokens in the same bytes.
        return _change(config, kv_cache_dtype=dtype, kv_cache_memory=int(pool), num_kv_blocks=None)
    return propose


def _weight_quant(method: str) -> Callable[[dict, Context], Proposal]:
    def propose(config: dict, context: Context) -> Proposal:
        current = config.get("quantization")
        if current is not None and (method == "int8" or current in ("awq", "rtn4")):
            return Proposal(None, f"the weights are already quantized ({current})")
        change: dict = {"quantization": method}
        linear, pool = context.linear_weight_bytes, context.kv_cache_bytes
        if context.bottleneck == "kv-memory" and context.goal != "memory" and linear and pool:
            # Spend the bytes the weights free on the KV pool. An unquantized "auto" dtype counts as
            # 16-bit: on a CPU that computes in float32 more is freed than this gives the pool.
            before = QUANTIZED_BYTES_PER_WEIGHT.get(current) or DTYPE_BYTES.get(config.get("dtype"), 2.0)
            freed = int(linear * max(0.0, 1 - QUANTIZED_BYTES_PER_WEIGHT[method] / before))
            change.update(kv_cache_memory=int(pool) + freed, num_kv_blocks=None)
        return _change(config, **change)
    return propose


def _speculative(config: dict, context: Context) -> Proposal:
    """Prompt lookup: no second model to load or keep in memory, and the output distribution stays the target's,
    so it changes no numerics. The engine drafts only where it pays; the measurement decides whether it does."""
    current = config.get("speculative_method", "none")
    if current != "none":
        return Proposal(None, f"the engine already speculates ({current})")
    return _change(config, speculative_method="ngram")


def _never(why: str) -> Callable[[dict, Context], Proposal]:
    return lambda config, context: Proposal(None, why)


def _technique(name, effort, addresses, changes_numerics, what, propose) -> Technique:
    return Technique(name, effort, frozenset(addresses), changes_numerics, what, propose)


TECHNIQUES: tuple[Technique, ...] = (
    _technique("prefix-caching", 1, ("prefill", "queueing", "kv-memory"), False,
               "reuse the KV blocks of prompt prefixes shared between requests",
               _switch_on("enable_prefix_caching", "prefix caching")),
    _technique("chunked-prefill", 2, ("prefill", "queueing", "decode"), False,
               "split long prompts into chunks that share steps with decoding sequences",
               _switch_on("enable_chunked_prefill", "chunked prefill")),
    _technique("max-num-seqs", 3, ("decode", "queueing"), False,
               "double the sequences decoded together (max_num_seqs, up to 512)",
               _double("max_num_seqs", MAX_NUM_SEQS_CAP, _seqs_enough)),
    _technique("max-num-batched-tokens", 4, ("prefill", "queueing"), False,
               "double the tokens one step may process (max_num_batched_tokens, up to 16384)",
               _double("max_num_batched_tokens", MAX_NUM_BATCHED_TOKENS_CAP, _batched_tokens_enough)),
    _technique("kv-cache-size", 5, ("kv-memory", "queueing"), False,
               "grow the KV pool to what the workload holds at once (num_kv_blocks)", _kv_cache_size),
    _technique("kv-int8", 6, ("kv-memory",), True,
               "store the KV cache in int8 (about half the bytes per token)", _kv_quant("int8")),
    _technique("kv-fp8", 7, ("kv-memory",), True,
               "store the KV cache in fp8 e4m3 (about half the bytes per token)", _kv_quant("fp8")),
    _technique("int8-weights", 8, ("weights-memory", "kv-memory", "decode"), True,
               "quantize the linear weights to int8 (about half the bytes of 16-bit)", _weight_quant("int8")),
    _technique("awq", 9, ("weights-memory", "kv-memory", "decode"), True,
               "quantize the linear weights to 4-bit AWQ (about a quarter of the bytes of 16-bit)",
               _weight_quant("awq")),
    _technique("speculative-decoding", 10, ("decode",), False,
               "draft tokens by prompt lookup and verify them in one step (output distribution unchanged)",
               _speculative),
    _technique("distilled-student", 11, ("decode", "weights-memory"), True,
               "serve a smaller model distilled from this one",
               _never("no distilled student is registered for this model")),
)
_BY_NAME = {t.name: t for t in TECHNIQUES}


def technique(name: str) -> Technique:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown technique {name!r}; known: {', '.join(_BY_NAME)}") from None


def plan_techniques(bottleneck: str, requested: Sequence[str] | None) -> list[Technique]:
    """The techniques to try, lowest effort first: those that address the bottleneck, or exactly the
    requested ones (whatever the bottleneck)."""
    if requested is None:
        if bottleneck not in BOTTLENECKS:
            raise ValueError(f"unknown bottleneck {bottleneck!r}; known: {', '.join(BOTTLENECKS)}")
        return [t for t in TECHNIQUES if bottleneck in t.addresses]
    if isinstance(requested, str):
        raise ValueError(f"techniques must be a list of names, got the string {requested!r}")
    if not requested:
        raise ValueError(f"no technique requested; known: {', '.join(_BY_NAME)}")
    repeated = sorted({name for name in requested if list(requested).count(name) > 1})
    if repeated:
        raise ValueError(f"technique(s) requested more than once: {', '.join(repeated)}")
    return sorted((technique(name) for name in requested), key=lambda t: t.effort)


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"
