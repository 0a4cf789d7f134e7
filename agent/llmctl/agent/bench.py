"""`llmctl bench`: a seeded workload, and TTFT / TPOT / ITL / throughput of the in-process engine, an
OpenAI-compatible URL, or the transformers baselines (agent/bench_hf.py) on exactly the same requests.

Every time is `time.perf_counter()` seconds relative to the start of its run; a request's clock starts at its
scheduled arrival, so queueing in front of a busy target counts in its TTFT.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASELINES = ("hf-sequential", "hf-static", "vllm")
HF_BASELINES = ("hf-sequential", "hf-static")


def parse_range(flag: str, text: str) -> tuple[int, int]:
    """'A:B' -> (A, B) with 1 <= A <= B; a bare 'N' means N:N."""
    lo, sep, hi = text.strip().partition(":")
    try:
        bounds = (int(lo), int(hi if sep else lo))
    except ValueError:
        bounds = (0, -1)
    if not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"{flag} must look like A:B with 1 <= A <= B, got {text!r}")
    return bounds


WORKLOAD_KEYS = ("requests", "input_len", "output_len", "shared_prefix_len", "request_rate", "seed", "lengths")
"""What a --workload file may hold; its keys win over the matching flags."""
MAX_LENGTHS = 10_000


def read_workload_file(path: str) -> dict[str, Any]:
    """The --workload file: a JSON object of WORKLOAD_KEYS (as `llmctl traffic -o json` prints under
    "workload"). ValueError with one line saying what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--workload {path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"--workload {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"--workload {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--workload {path} must hold a JSON object of {', '.join(WORKLOAD_KEYS)}")
    unknown = sorted(set(data) - set(WORKLOAD_KEYS))
    if unknown:
        raise ValueError(f"--workload {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(WORKLOAD_KEYS)}")
    return data


def parse_lengths(raw: Any) -> tuple[tuple[int, int], ...]:
    """[[input_tokens, output_tokens], ...] -> a tuple of pairs of integers >= 1."""
    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not (isinstance(raw, list) and 1 <= len(raw) <= MAX_LENGTHS
            and all(isinstance(p, list) and len(p) == 2 and positive(p[0]) and positive(p[1]) for p in raw)):
        raise ValueError(f"workload lengths must be 1 to {MAX_LENGTHS} pairs [input_tokens, output_tokens] of "
                         "integers >= 1")
    return tuple((p[0], p[1]) for p in raw)


@dataclass(frozen=True)
class BenchOptions:
    """What to run and on which workload. Lengths count tokens; a shared prefix adds to input_len."""

    requests: int = 64
    input_len: tuple[int, int] = (32, 512)
    output_len: tuple[int, int] = (16, 256)
    shared_prefix_len: int = 0
    lengths: tuple[tuple[int, int], ...] | None = None
    """Explicit (input, output) lengths, request i taking pair i mod len (a workload from recorded traffic);
    input_len and output_len are then their smallest and largest."""
    request_rate: float = math.inf
    """Mean arrivals per second of a Poisson process; inf sends every request at t=0."""
    seed: int = 0
    baselines: tuple[str, ...] = ()
    hf_batch_size: int = 16
    url: str | None = None
    compare_prefix_caching: bool = False
    compare_quantization: tuple[str, ...] = ()
    """Weight formats (int8, awq, rtn4) run as extra engine targets llmctl-<format> beside the float one."""
    compare_speculative: bool = False
    """Also run the (speculating) engine config without speculation, as llmctl-no-spec."""
    baseline_first: bool = False
    """Run the --compare-* row (llmctl-no-prefix-cache, llmctl-no-spec) before the configured one: a process's
    first engine run may differ from its second (a few percent on a CPU), so a comparison is run both ways."""
    isolate_runs: bool = False
    """Run each engine target in a process of its own (agent/bench_child.py): two engines run one after the
    other in one process are not measured alike."""
    run_engine: bool = True
    json_path: str | None = None
    workload_kind: str = "mixed"
    """mixed: random word prompts; repetitive: passages to quote or summarise (agent/bench_workload.py)."""

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"--requests must be >= 1, got {self.requests}")
        if self.shared_prefix_len < 0:
            raise ValueError(f"--shared-prefix-len must be >= 0, got {self.shared_prefix_len}")
        if self.lengths is not None:
            if not self.lengths:
                raise ValueError("workload lengths must hold at least one [input_tokens, output_tokens] pair")
            for i, name in enumerate(("input_len", "output_len")):
                object.__setattr__(self, name, (min(p[i] for p in self.lengths), max(p[i] for p in self.lengths)))
        if not self.request_rate > 0:
            raise ValueError(f"--request-rate must be a positive number or inf, got {self.request_rate}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
        if self.hf_batch_size < 1:
            raise ValueError(f"--hf-batch-size must be >= 1, got {self.hf_batch_size}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--url must start with http:// or https://, got {self.url!r}")
        if self.compare_prefix_caching and not self.run_engine:
            raise ValueError("--compare-prefix-caching needs the in-process engine (no --no-engine/--url)")
        if self.compare_quantization and not self.run_engine:
            raise ValueError("--compare-quantization needs the in-process engine (no --no-engine/--url)")
        if self.compare_speculative and not self.run_engine:
            raise ValueError("--compare-speculative needs the in-process engine (no --no-engine/--url)")
        from llmctl.agent.bench_workload import WORKLOAD_KINDS

        if self.workload_kind not in WORKLOAD_KINDS:
            raise ValueError(f"--workload kind must be one of {', '.join(WORKLOAD_KINDS)}, got {self.workload_kind!r}")
        if self.workload_kind == "repetitive" and self.shared_prefix_len:
            raise ValueError("--shared-prefix-len does not apply to --workload repetitive (chat prompts)")
        from llmctl.agent.engine.config import QUANTIZATIONS

        bad = [q for q in self.compare_quantization if q not in QUANTIZATIONS]
        if bad:
            raise ValueError(f"--compare-quantization takes {', '.join(QUANTIZATIONS)}, got {bad[0]!r}")
        if not (self.run_engine or self.baselines or self.url):
            raise ValueError("nothing to run: keep the engine, or give --baselines or --url")

    @classmethod
    def from_cli(
        cls, *, requests: int, input_len: str, output_len: str, shared_prefix_len: int, request_rate: str,
        seed: int, baselines: str, hf_batch_size: int, url: str | None, compare_prefix_caching: bool,
        run_engine: bool, json_path: str | None, workload: dict[str, Any] | None = None,
        compare_quantization: str = "", compare_speculative: bool = False, workload_kind: str = "mixed",
        baseline_first: bool = False, isolate_runs: bool = False,
    ) -> BenchOptions:
        """Parse the CLI's strings. With --url the in-process engine stays off: --model then only names the
        tokenizer (and the baselines' weights), so no local engine competes with the server. `workload` (a
        --workload file's object) wins over the flags it has keys for; its lengths over both ranges."""
        workload = workload or {}
        raw_rate = workload.get("request_rate", request_rate)
        try:
            rate = math.nan if isinstance(raw_rate, bool) else float(str(raw_rate).strip())
        except ValueError:
            rate = math.nan
        if not rate > 0:
            raise ValueError(f"--request-rate must be a positive number or inf, got {raw_rate!r}")
        lengths = parse_lengths(workload["lengths"]) if "lengths" in workload else None
        spans = ((1, 1), (1, 1)) if lengths is not None else (
            parse_range("--input-len", _range_text(workload.get("input_len", input_len))),
            parse_range("--output-len", _range_text(workload.get("output_len", output_len))))
        counts = {key: workload.get(key, flag) for key, flag in
                  (("requests", requests), ("shared_prefix_len", shared_prefix_len), ("seed", seed))}
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"workload {key} must be an integer, got {value!r}")
        return cls(
            requests=counts["requests"], input_len=spans[0], output_len=spans[1],
            shared_prefix_len=counts["shared_prefix_len"], lengths=lengths, request_rate=rate, seed=counts["seed"],
            baselines=tuple(name.strip() for name in baselines.split(",") if name.strip()),
            hf_batch_size=hf_batch_size, url=url.rstrip("/") if url else None,
            compare_prefix_caching=compare_prefix_caching, run_engine=run_engine and url is None,
            compare_quantization=tuple(q.strip() for q in compare_quantization.split(",") if q.strip()),
            compare_speculative=compare_speculative, json_path=json_path, workload_kind=workload_kind,
            baseline_first=baseline_first, isolate_runs=isolate_runs,
        )


def _range_text(value: Any) -> str:
    """A workload file's [A, B] (or N) as the "A:B" the range flags take."""
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}:{value[1]}"
    return str(value)


def resolve_dtype(requested: str, device: str = "cpu") -> str:
    """The engine's choice for 'auto', as a name, so the baselines run at the engine's dtype."""
    from llmctl.agent.engine.engine import resolve_dtype as engine_dtype

    return str(engine_dtype(requested, device)).removeprefix("torch.")


@dataclass(frozen=True)
class BenchRequest:
    index: int
    prompt_token_ids: list[int]
    output_len: int
    arrival_s: float


def request_dicts(workload: list[BenchRequest]) -> list[dict[str, Any]]:
    """The workload as JSON for a child process that runs it (bench_child.py, vllm_child.py)."""
    return [{"index": r.index, "prompt_token_ids": r.prompt_token_ids, "output_len": r.output_len,
             "arrival_s": r.arrival_s} for r in workload]


def word_token_ids(tokenizer) -> list[int]:
    """Ids of tokens that decode to a whole ASCII word (" station"), so prompts read as word salad to the
    model and never hold special or control tokens. Vocabularies without such tokens (SentencePiece decodes
    drop the leading space; tiny test tokenizers) fall back to alphabetic pieces, then to printable ones."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    alpha = [(i, t) for i, t in zip(ids, texts, strict=True) if t.strip().isascii() and t.strip().isalpha()]
    for pool in ([i for i, t in alpha if t[0] == " " and len(t) >= 3], [i for i, t in alpha if len(t) >= 2]):
        if len(pool) >= 16:
            return pool
    return [i for i, t in zip(ids, texts, strict=True) if t.strip() and t.isprintable()]


def make_workload(tokenizer, options: BenchOptions) -> list[BenchRequest]:
    """The same seed gives the same prompts, lengths and arrival times on every target. Explicit lengths are
    taken in order, cycled (or cut) to the number of requests. A repetitive workload's input lengths are its
    passages' (agent/bench_workload.py), to which its instruction and chat template add."""
    rng = random.Random(options.seed)
    repetitive = options.workload_kind == "repetitive"
    pool = [] if repetitive else word_token_ids(tokenizer)
    prefix = rng.choices(pool, k=options.shared_prefix_len)
    n = options.requests
    if options.lengths is not None:
        lens = [options.lengths[i % len(options.lengths)] for i in range(n)]
    else:
        lens = [(rng.randint(*options.input_len), rng.randint(*options.output_len)) for _ in range(n)]
    if repetitive:
        from llmctl.agent.bench_workload import repetitive_prompts

        prompts = repetitive_prompts(tokenizer, options.seed, [n_in for n_in, _ in lens])
    else:
        prompts = [prefix + rng.choices(pool, k=n_in) for n_in, _ in lens]
    arrivals, t = [], 0.0
    for _ in range(n):
        arrivals.append(t)
        if math.isfinite(options.request_rate):
            t += rng.expovariate(options.request_rate)
    return [BenchRequest(i, prompts[i], lens[i][1], arrivals[i]) for i in range(n)]


def warmup_prompts(tokenizer, seed: int, count: int = 2, length: int = 8) -> list[list[int]]:
    """Short prompts unrelated to the workload (own seed, shorter than a KV block) so warming up never
    pre-fills the prefix cache with workload tokens."""
    rng = random.Random(f"warmup-{seed}")
    pool = word_token_ids(tokenizer)
    return [rng.choices(pool, k=length) for _ in range(count)]


@dataclass
class RequestResult:
    index: int
    arrival_s: float
    token_times: list[float]
    """One entry per output token; tokens that arrived together share a time."""

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.token_times[-1] - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        n = self.num_output_tokens
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else None

    @property
    def itls_s(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


def distribution_ms(values_s: list[float]) -> dict[str, float | None]:
    if not values_s:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    import numpy as np

    ms = np.asarray(values_s) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"mean": float(ms.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


@dataclass
class RunResult:
    name: str
    results: list[RequestResult]
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    """Target-specific facts: KV memory and waste for the engine, padding waste for static batches."""

    def summary(self, workload: list[BenchRequest]) -> dict[str, Any]:
        done = [r for r in self.results if r.token_times]
        total_out = sum(r.num_output_tokens for r in self.results)
        counts = [r.num_output_tokens for r in sorted(self.results, key=lambda r: r.index)]
        return {
            "name": self.name,
            "output_tokens_per_s": total_out / self.wall_s,
            "requests_per_s": len(done) / self.wall_s,
            "ttft_ms": distribution_ms([r.ttft_s for r in done]),
            "tpot_ms": distribution_ms([r.tpot_s for r in done if r.tpot_s is not None]),
            "itl_ms": distribution_ms([gap for r in done for gap in r.itls_s]),
            "total_output_tokens": total_out,
            "wall_s": self.wall_s,
            "num_requests": len(done),
            "output_tokens_per_request": counts,
            "output_lengths_match": counts == [w.output_len for w in workload],
            **self.extra,
        }


@dataclass
class BenchReport:
    workload: list[BenchRequest]
    options: BenchOptions
    dtype: str | None
    runs: list[RunResult]
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        runs = [run.summary(self.workload) for run in self.runs]
        # Ratios are against the first baseline that ran (the first run when none did).
        reference = next((r for r in runs if r["name"] in BASELINES), runs[0]) if runs else None
        for r in runs:
            r["x_reference"] = r["output_tokens_per_s"] / max(reference["output_tokens_per_s"], 1e-9)
        return {
            "reference": reference["name"] if reference else None,
            "runs": runs,
            "workload": {
                "kind": o.workload_kind,
                "model": self.model,
                "num_requests": o.requests,
                "input_len": list(o.input_len),
                "output_len": list(o.output_len),
                "shared_prefix_len": o.shared_prefix_len,
                "request_rate": "inf" if math.isinf(o.request_rate) else o.request_rate,
                "seed": o.seed,
                "isolated_runs": o.isolate_runs,
                **({"lengths": [list(p) for p in o.lengths]} if o.lengths is not None else {}),
                "total_prompt_tokens": sum(len(w.prompt_token_ids) for w in self.workload),
                "total_output_tokens": sum(w.output_len for w in self.workload),
            },
            "dtype": self.dtype,
        }


Advance = Callable[[], None]


def engine_params(max_tokens: int):
    from llmctl.agent.engine.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


async def drive_requests(
    workload: list[BenchRequest], stream: Callable[[str, BenchRequest], Any], advance: Advance, tag: str
) -> RunResult:
    """Submit each request at its arrival time. `stream(request_id, request)` yields how many tokens just
    arrived; a negative count withdraws that many of the latest ones (a server's usage fixing our count)."""
    t0 = time.perf_counter()

    async def one(req: BenchRequest) -> RequestResult:
        delay = t0 + req.arrival_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        times: list[float] = []
        async for count in stream(f"{tag}-{req.index}", req):
            now = time.perf_counter() - t0
            if count < 0:
                del times[count:]
            else:
                times.extend([now] * count)
        advance()
        return RequestResult(req.index, req.arrival_s, times)

    results = await asyncio.gather(*(one(r) for r in workload))
    return RunResult(tag, list(results), time.perf_counter() - t0)


async def run_engine_target(
    name: str, config, workload: list[BenchRequest], warmup: list[list[int]], advance: Advance
) -> RunResult:
    from llmctl.agent.bench_speculative import engine_run_extra
    from llmctl.agent.engine.async_engine import AsyncEngine

    aeng = AsyncEngine.from_config(config)
    await aeng.start()
    try:
        async def stream(request_id: str, req: BenchRequest):
            async for out in aeng.generate(request_id, req.prompt_token_ids, engine_params(req.output_len)):
                yield len(out.output.delta_token_ids)

        await drive_requests(
            [BenchRequest(i, p, 4, 0.0) for i, p in enumerate(warmup)], stream, lambda: None, f"{name}-warmup"
        )
        before = aeng.stats()
        run = await drive_requests(workload, stream, advance, name)
        stats, info = aeng.stats(), aeng.engine.info
        run.extra = {
            "peak_kv_bytes": stats.peak_used_blocks * info.block_size * info.kv_bytes_per_token,
            "peak_used_blocks": stats.peak_used_blocks,
            "num_kv_blocks": stats.num_kv_blocks,
            "peak_kv_waste": stats.peak_kv_waste,
            "prefix_cache_hit_rate": stats.prefix_cache_hits / max(stats.prefix_cache_queries, 1),
            "num_preemptions": stats.num_preemptions,
            "enable_prefix_caching": config.enable_prefix_caching,
            **engine_run_extra(config, before, stats),
        }
        return run
    finally:
        await aeng.stop()


def free_memory() -> None:
    """Return the previous target's weights and KV pool before the next one allocates its own."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


async def served_model_id(client, url: str) -> str:
    resp = await client.get(f"{url}/v1/models")
    resp.raise_for_status()
    data = resp.json().get("data") or []
    if not data:
        raise ValueError(f"{url}/v1/models lists no model")
    return data[0]["id"]


def api_base(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def run_url_target(
    url: str, model_id: str, workload: list[BenchRequest], warmup: list[list[int]], advance: Advance
) -> RunResult:
    """Stream /v1/completions with token-id prompts. A chunk counts as one token unless it says how many
    it carries (token_ids, logprobs.tokens); the final usage, when sent, corrects the count at the end."""
    import httpx

    from llmctl.agent.server_metrics import ServerWatch

    # No connection cap: a client-side queue would hide the server's own queueing from TTFT.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), limits=limits) as client:

        async def stream(request_id: str, req: BenchRequest):
            body = {
                "model": model_id, "prompt": req.prompt_token_ids, "max_tokens": req.output_len,
                "temperature": 0.0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True},
            }
            counted, usage = 0, None
            async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise ValueError(f"{url} answered {resp.status_code}: {resp.text[:300]}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        message = chunk["error"].get("message")
                        raise ValueError(f"{url} failed request {request_id}: {message}")
                    usage = chunk.get("usage") or usage
                    n = sum(chunk_token_count(choice) for choice in chunk.get("choices") or [])
                    if n:
                        counted += n
                        yield n
            # Negative drops the surplus: the server sent chunks that carried no token.
            correction = (usage or {}).get("completion_tokens", counted) - counted
            if correction:
                yield correction

        # The server's own view (preemptions, memory, peak KV usage) from /metrics, around the timed run only.
        watch = ServerWatch(client, url)
        try:
            await drive_requests(
                [BenchRequest(i, p, 4, 0.0) for i, p in enumerate(warmup)], stream, lambda: None, "url-warmup"
            )
            await watch.start()
            run = await drive_requests(workload, stream, advance, "url")
            await watch.stop()
        except httpx.HTTPError as exc:
            raise ValueError(f"{url}: {exc!r}") from None
        run.extra = {"url": url, "served_model": model_id}
        if server := watch.summary():
            run.extra["server"] = server
        return run


def chunk_token_count(choice: dict) -> int:
    if choice.get("token_ids") is not None:
        return len(choice["token_ids"])
    logprobs = choice.get("logprobs") or {}
    if logprobs.get("tokens") is not None:
        return len(logprobs["tokens"])
    # A closing chunk that only carries finish_reason holds no token.
    return 1 if choice.get("text") or choice.get("finish_reason") is None else 0


def model_folder(ref: str) -> Path:
    from llmctl.agent.engine.loader import resolve_model

    return Path(resolve_model(ref))


def check_context(folder: Path, config, options: BenchOptions) -> int | None:
    """Reject a workload the model cannot hold before loading anything heavy; the context limit."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", None)
    if config.max_model_len is not None:
        limit = min(limit or config.max_model_len, config.max_model_len)
    n_in, n_out = options.input_len[1], options.output_len[1]
    if options.lengths is not None:
        n_in, n_out = max(options.lengths, key=sum)
    longest = options.shared_prefix_len + n_in + n_out
    if limit is not None and longest > limit:
        raise ValueError(
            f"the longest request needs {longest} tokens (shared prefix {options.shared_prefix_len} + input "
            f"{n_in} + output {n_out}) but the context limit is {limit}; "
            + ("shorten the workload's lengths or shared_prefix_len" if options.lengths is not None
               else "lower --input-len, --output-len or --shared-prefix-len")
        )
    return limit


def fetch_served_model(url: str) -> str:
    import httpx

    async def fetch() -> str:
        async with httpx.AsyncClient(timeout=10.0) as client:
            return await served_model_id(client, url)

    try:
        return asyncio.run(fetch())
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach {url}/v1/models: {exc}") from None


def served_tokenizer(model_id: str) -> str | Path:
    """Where the served model's tokenizer is when only --url is given: the local cache for a registered name,
    path or .gguf; for a hub id, the hub itself, so only tokenizer files are fetched, never the weights."""
    from llmctl.agent.engine.errors import EngineError
    from llmctl.agent.engine.paths import REGISTRY

    if model_id not in REGISTRY and not Path(model_id).expanduser().exists():
        return model_id
    try:
        return model_folder(model_id)
    except EngineError as exc:
        raise ValueError(f"no tokenizer for the served model {model_id!r} ({exc}); pass --model") from None


def run_bench(options: BenchOptions, config=None, console=None) -> BenchReport:
    """Build the workload once, run every target on it, print the table and write the JSON."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import AutoTokenizer

    console = console or Console()
    if config is None and (options.run_engine or options.baselines):
        raise ValueError("--model is needed for the in-process engine and the baselines")
    if options.compare_speculative and not config.speculative:
        raise ValueError("--compare-speculative needs --speculative-method (ngram, draft or self-int4)")
    local = options.run_engine or bool(options.baselines)
    # A server's dtype is its own business: report one only when something ran here.
    dtype = resolve_dtype(config.dtype, config.device) if local else None
    url_model = fetch_served_model(api_base(options.url)) if options.url else None
    folder = model_folder(config.model) if config is not None else served_tokenizer(url_model)
    limit = None
    if local:
        config = config.replace(dtype=dtype)
        limit = check_context(folder, config, options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise ValueError(f"cannot load the tokenizer from {folder}: {exc}; pass --model") from None
    workload = make_workload(tokenizer, options)
    if options.workload_kind == "repetitive":
        from llmctl.agent.bench_workload import check_fits

        check_fits(workload, limit)
    warmup = warmup_prompts(tokenizer, options.seed)

    runs: list[RunResult] = []
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:

        def advancer(name: str) -> Advance:
            task = progress.add_task(name, total=len(workload))
            return lambda: progress.advance(task)

        if any(b in HF_BASELINES for b in options.baselines):
            from llmctl.agent.bench_hf import run_baselines
            from llmctl.agent.engine.threads import run_in_fresh_thread

            runs += run_in_fresh_thread(
                run_baselines, folder, dtype, config, options, workload, warmup, tokenizer, advancer
            )
        if options.run_engine:
            variants = [("llmctl", config)]
            if options.compare_prefix_caching:
                variants = [
                    ("llmctl", config.replace(enable_prefix_caching=True)),
                    ("llmctl-no-prefix-cache", config.replace(enable_prefix_caching=False)),
                ]
            if options.compare_speculative:
                variants.append(("llmctl-no-spec", config.replace(speculative_method="none", speculative_model=None)))
            if options.baseline_first:
                variants.reverse()
            variants += [(f"llmctl-{q}", config.replace(quantization=q)) for q in options.compare_quantization]
            for name, cfg in variants:
                if options.isolate_runs:
                    from llmctl.agent.bench_child import run_isolated

                    runs.append(run_isolated(name, cfg, workload, warmup, advancer(name)))
                    continue
                runs.append(asyncio.run(run_engine_target(name, cfg, workload, warmup, advancer(name))))
                free_memory()
        if "vllm" in options.baselines:
            from llmctl.agent.bench_vllm import run_vllm_baseline

            runs.append(run_vllm_baseline(folder, dtype, config, workload, warmup, advancer("vllm")))
        if options.url is not None:
            runs.append(asyncio.run(
                run_url_target(api_base(options.url), url_model, workload, warmup, advancer("url"))
            ))

    report = BenchReport(workload, options, dtype, runs, model=config.model if local else url_model)
    print_report(report, console)
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"wrote {options.json_path}")
    return report


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(report: BenchReport, console) -> None:
    """One row per run for throughput and memory, then the latency statistics; both fit 80 columns."""
    from rich import box
    from rich.table import Table

    data = report.to_dict()
    rows = data["runs"]
    reference = next(r for r in rows if r["name"] == data["reference"])
    o = report.options
    rate = "inf" if math.isinf(o.request_rate) else f"{o.request_rate:g}/s"
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
        title=f"llmctl bench: {report.model} ({report.dtype or 'server dtype'})",
        caption=(
            f"{o.workload_kind} workload, {o.requests} requests, "
            f"{'passage' if o.workload_kind == 'repetitive' else 'input'} {o.input_len[0]}:{o.input_len[1]}"
            f"{' (recorded lengths)' if o.lengths is not None else ''} "
            f"(+{o.shared_prefix_len} shared), "
            f"output {o.output_len[0]}:{o.output_len[1]}, rate {rate}, seed {o.seed}"
        ),
    )
    table.add_column("run", no_wrap=True)
    ratio = "x vs " + reference["name"].replace("-", "-\n", 1)
    for header in ("out\ntok/s", ratio, "req/s", "tokens\nout", "wall\ns", "peak KV\nMiB", "KV\nwaste"):
        # Headers keep whole words; the numbers below are shorter than them.
        table.add_column(header, justify="right", min_width=max(len(line) for line in header.split("\n")))
    for r in rows:
        peak_kv, waste = r.get("peak_kv_bytes"), r.get("peak_kv_waste")
        table.add_row(
            r["name"], f"{r['output_tokens_per_s']:.1f}",
            f"{r['x_reference']:.2f}x",
            f"{r['requests_per_s']:.2f}",
            str(r["total_output_tokens"]), f"{r['wall_s']:.2f}",
            "-" if peak_kv is None else f"{peak_kv / 2**20:.2f}", "-" if waste is None else f"{waste:.1%}",
        )
    latency = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, title="latency (ms)"
    )
    latency.add_column("run", no_wrap=True)
    latency.add_column("metric")
    for stat in ("mean", "p50", "p95", "p99"):
        latency.add_column(stat, justify="right")
    for r in rows:
        for metric in ("ttft", "tpot", "itl"):
            dist = r[f"{metric}_ms"]
            latency.add_row(
                r["name"] if metric == "ttft" else "", metric.upper(), *(fmt_ms(dist[k]) for k in dist),
                end_section=metric == "itl",
            )
    console.print(table)
    console.print(latency)
    from llmctl.agent.bench_speculative import speculation_line

    for r in rows:
        if (line := speculation_line(r)) is not None:
            console.print(line)
        if r.get("server"):
            console.print(f"{r['name']} server: {server_line(r['server'])}")
        if not r["output_lengths_match"]:
            console.print(f"[yellow]warning: {r['name']} did not return exactly the drawn output lengths[/]")


def server_line(server: dict) -> str:
    """What a URL run's server reported, in one line ("-" for what it did not)."""
    def mib(key: str) -> str:
        return f"{server[key] / 2**20:.1f} MiB" if key in server else "-"

    usage = f"{server['peak_kv_usage']:.0%}" if "peak_kv_usage" in server else "-"
    return (f"{server.get('num_preemptions', '-')} preemptions, peak KV usage {usage} of {mib('kv_cache_bytes')}, "
            f"weights {mib('model_bytes')}")
