"""Engine-side commands: serve, generate, bench, models. Mounted on the root `llmctl` app.

Heavy imports (torch, transformers, fastapi) happen inside the commands so `llmctl --help` is fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

models_app = typer.Typer(help="Fetch and list models in the local cache.", no_args_is_help=True)


def fail(message: str) -> None:
    """Exit with code 2 and one line saying what to fix."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code=2)


# Engine flags shared by serve / generate / bench.
Dtype = Annotated[str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16")]
BlockSize = Annotated[int, typer.Option("--block-size", help="KV cache block size in tokens")]
NumKvBlocks = Annotated[int | None, typer.Option("--num-kv-blocks", help="Exact KV pool size in blocks")]
KvCacheMemory = Annotated[int | None, typer.Option("--kv-cache-memory", help="KV pool size in bytes")]
KvCacheDtype = Annotated[str, typer.Option("--kv-cache-dtype", help="auto | int8 | fp8 (e4m3)")]
MaxNumSeqs = Annotated[int, typer.Option("--max-num-seqs", help="Most sequences in one step")]
MaxBatchedTokens = Annotated[
    int, typer.Option("--max-num-batched-tokens", help="Most tokens (prefill + decode) in one step")
]
MaxModelLen = Annotated[int | None, typer.Option("--max-model-len", help="Context limit")]
PrefixCaching = Annotated[bool, typer.Option("--enable-prefix-caching/--no-prefix-caching")]
ChunkedPrefill = Annotated[bool, typer.Option("--enable-chunked-prefill/--no-chunked-prefill")]
Threads = Annotated[int | None, typer.Option("--threads", help="torch CPU threads")]
Quantization = Annotated[
    str, typer.Option("--quantization", help="Quantize weights at load: none | int8 | awq | rtn4")
]
GroupSize = Annotated[str, typer.Option("--group-size", help="4-bit group size: auto | 32 | 64 | 128")]
# Speculative decoding; the defaults are EngineConfig's, so a command given none of them speculates as before.
SpeculativeMethod = Annotated[str, typer.Option(
    "--speculative-method", help="none | ngram (prompt lookup) | draft (--speculative-model) | self-int4")]
SpeculativeModel = Annotated[str | None, typer.Option(
    "--speculative-model", help="Draft model of --speculative-method draft (same tokenizer as MODEL)")]
NumSpeculativeTokens = Annotated[int, typer.Option(
    "--num-speculative-tokens", help="Most tokens drafted per sequence and step (1..16)")]
NgramMax = Annotated[int, typer.Option("--ngram-max", help="ngram: longest suffix looked up in the context")]
NgramMin = Annotated[int, typer.Option("--ngram-min", help="ngram: shortest suffix looked up in the context")]


def quant_flags(quantization: str, group_size: str) -> dict:
    """EngineConfig fields for --quantization / --group-size ('none' and 'auto' are the defaults)."""
    q = None if quantization in ("none", "") else quantization
    if group_size == "auto":
        return {"quantization": q, "quantization_group_size": None}
    try:
        return {"quantization": q, "quantization_group_size": int(group_size)}
    except ValueError:
        fail(f"--group-size must be auto, 32, 64 or 128, got {group_size!r}")


def spec_flags(
    speculative_method: str, speculative_model: str | None, num_speculative_tokens: int, ngram_max: int,
    ngram_min: int,
) -> dict:
    """EngineConfig fields for the speculative-decoding flags (checked by EngineConfig itself)."""
    return {"speculative_method": speculative_method, "speculative_model": speculative_model,
            "num_speculative_tokens": num_speculative_tokens, "ngram_max": ngram_max, "ngram_min": ngram_min}


def engine_config(model: str, **flags):
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.engine.errors import EngineError

    try:
        return EngineConfig(model=model, **flags)
    except EngineError as exc:
        fail(str(exc))


def given_on_command_line(ctx: typer.Context, param: str) -> bool:
    # typer vendors its own click, so the parameter-source enum is compared by name.
    return getattr(ctx.get_parameter_source(param), "name", None) == "COMMANDLINE"


def engine_config_object(raw: str, given_flags: list[str], flag: str = "--engine-config") -> dict:
    """`flag`'s JSON object of EngineConfig fields; exits 2 if it is not one, or if engine flags
    (`given_flags`, parameter names) were given beside it."""
    import json

    if given_flags:
        drop = ", ".join("--" + g.replace("_", "-") for g in given_flags)
        fail(f"{flag} replaces the engine flags; drop {drop}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"{flag} is not valid JSON: {exc}")
    if not isinstance(data, dict):
        fail(f"{flag} must be a JSON object of EngineConfig fields")
    return data


def config_from_json(ctx: typer.Context, model: str, raw: str, served_model_name: str | None):
    """The EngineConfig a control plane sends: a JSON object of its fields; the MODEL argument wins."""
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.engine.errors import EngineError

    not_engine = ("model", "host", "port", "engine_config_json", "served_model_name", "graceful_shutdown_s")
    given = [name for name in ctx.params if name not in not_engine and given_on_command_line(ctx, name)]
    data = engine_config_object(raw, given)
    data["model"] = model
    if served_model_name is not None:
        data["served_model_name"] = served_model_name
    try:
        return EngineConfig.from_dict(data)
    except (EngineError, TypeError) as exc:
        fail(str(exc))


def register_engine_commands(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("serve")(serve)
    app.command("generate")(generate)
    app.command("bench")(bench)
    from llmctl.agent.quant_cli import eval_command, quantize

    app.command("quantize")(quantize)
    app.command("eval")(eval_command)


def serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Short name, HF folder, .gguf file or hub id")],
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="Model name in the API")] = None,
    dtype: Dtype = "auto",
    block_size: BlockSize = 16,
    num_kv_blocks: NumKvBlocks = None,
    kv_cache_memory: KvCacheMemory = None,
    kv_cache_dtype: KvCacheDtype = "auto",
    max_num_seqs: MaxNumSeqs = 64,
    max_num_batched_tokens: MaxBatchedTokens = 2048,
    max_model_len: MaxModelLen = None,
    enable_prefix_caching: PrefixCaching = True,
    enable_chunked_prefill: ChunkedPrefill = True,
    threads: Threads = None,
    quantization: Quantization = "none",
    group_size: GroupSize = "auto",
    speculative_method: SpeculativeMethod = "none",
    speculative_model: SpeculativeModel = None,
    num_speculative_tokens: NumSpeculativeTokens = 4,
    ngram_max: NgramMax = 4,
    ngram_min: NgramMin = 1,
    graceful_shutdown_s: Annotated[
        float, typer.Option("--graceful-shutdown-s", help="On SIGTERM, how long requests in flight may finish")
    ] = 30.0,
    engine_config_json: Annotated[
        str | None,
        typer.Option("--engine-config", help="The whole EngineConfig as a JSON object, instead of the engine flags"),
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", min=1, help="Larger request bodies get a 413 [default: 16 MiB]")
    ] = None,
    read_timeout_s: Annotated[
        float | None, typer.Option("--read-timeout-s", min=0.1, help="A client must send each whole request within "
                                   "this many seconds, else 408 and the connection is closed [default: 30]")
    ] = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API."""
    if engine_config_json is not None:
        config = config_from_json(ctx, model, engine_config_json, served_model_name)
    else:
        config = engine_config(
            model, dtype=dtype, block_size=block_size, num_kv_blocks=num_kv_blocks,
            kv_cache_memory=kv_cache_memory, kv_cache_dtype=kv_cache_dtype, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching, enable_chunked_prefill=enable_chunked_prefill,
            num_threads=threads, served_model_name=served_model_name, **quant_flags(quantization, group_size),
            **spec_flags(speculative_method, speculative_model, num_speculative_tokens, ngram_max, ngram_min),
        )
    from llmctl.agent.engine.errors import EngineError
    from llmctl.agent.server import run_server

    try:
        limits = {"max_body_bytes": max_body_bytes, "read_timeout_s": read_timeout_s}
        run_server(config, host=host, port=port, graceful_shutdown_s=graceful_shutdown_s,
                   **{name: value for name, value in limits.items() if value is not None})
    except EngineError as exc:
        fail(str(exc))


def generate(
    model: Annotated[str, typer.Argument(help="Short name, HF folder, .gguf file or hub id")],
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option()] = 0,
    seed: Annotated[int | None, typer.Option()] = None,
    chat: Annotated[bool, typer.Option("--chat/--raw", help="Wrap the prompt in the chat template")] = True,
    dtype: Dtype = "auto",
    threads: Threads = None,
    quantization: Quantization = "none",
    group_size: GroupSize = "auto",
    kv_cache_dtype: KvCacheDtype = "auto",
    speculative_method: SpeculativeMethod = "none",
    speculative_model: SpeculativeModel = None,
    num_speculative_tokens: NumSpeculativeTokens = 4,
    ngram_max: NgramMax = 4,
    ngram_min: NgramMin = 1,
) -> None:
    """Generate from one prompt, streaming to the terminal."""
    config = engine_config(
        model, dtype=dtype, num_threads=threads, kv_cache_dtype=kv_cache_dtype, **quant_flags(quantization, group_size),
        **spec_flags(speculative_method, speculative_model, num_speculative_tokens, ngram_max, ngram_min),
    )
    from llmctl.agent.engine.engine import LLMEngine
    from llmctl.agent.engine.errors import EngineError
    from llmctl.agent.engine.sampling import SamplingParams

    try:
        params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed
        )
        engine = LLMEngine(config)
        prompt_ids = (
            engine.chat_prompt_ids([{"role": "user", "content": prompt}]) if chat else prompt
        )
        engine.add_request("generate-0", prompt_ids, params)
        while engine.has_unfinished():
            for out in engine.step():
                sys.stdout.write(out.output.delta_text)
                sys.stdout.flush()
        sys.stdout.write("\n")
    except EngineError as exc:
        fail(str(exc))


def bench(
    model: Annotated[str | None, typer.Option("--model", help="Model for the engine and baselines")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Benchmark an OpenAI-compatible server")] = None,
    requests: Annotated[int, typer.Option("--requests")] = 64,
    input_len: Annotated[str, typer.Option("--input-len", help="A:B prompt tokens")] = "32:512",
    output_len: Annotated[str, typer.Option("--output-len", help="A:B output tokens")] = "16:256",
    shared_prefix_len: Annotated[int, typer.Option("--shared-prefix-len")] = 0,
    request_rate: Annotated[str, typer.Option("--request-rate", help="requests/s or inf")] = "inf",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workload: Annotated[str | None, typer.Option(
        "--workload", metavar="FILE|repetitive|mixed",
        help="mixed (default): random word prompts; repetitive: chat prompts asking to quote or summarise a "
             "passage of English text (--input-len tokens long); FILE: JSON object of workload keys (requests, "
             "input_len, output_len, shared_prefix_len, request_rate, seed, lengths: \\[\\[input, output], ...]); "
             "its keys win over those flags, lengths over both ranges")] = None,
    baselines: Annotated[str, typer.Option("--baselines", help="hf-sequential,hf-static,vllm (vllm: `make peers` first)")] = "",
    hf_batch_size: Annotated[int, typer.Option("--hf-batch-size")] = 16,
    compare_prefix_caching: Annotated[bool, typer.Option("--compare-prefix-caching")] = False,
    compare_quantization: Annotated[str, typer.Option(
        "--compare-quantization", metavar="LIST",
        help="Also run the engine with these weight formats (int8,awq,rtn4), as llmctl-<format> rows")] = "",
    compare_speculative: Annotated[bool, typer.Option(
        "--compare-speculative", help="Also run the engine without speculation, as the llmctl-no-spec row")] = False,
    baseline_first: Annotated[bool, typer.Option(
        "--baseline-first", help="Run the --compare-* row first (order effects: run a comparison both ways)")] = False,
    isolate_runs: Annotated[bool, typer.Option(
        "--isolate-runs", help="Run each engine row in a process of its own (fairest for --compare-*)")] = False,
    no_engine: Annotated[bool, typer.Option("--no-engine", help="Run only the baselines")] = False,
    json_path: Annotated[str | None, typer.Option("--json", help="Write results as JSON")] = None,
    dtype: Dtype = "auto",
    block_size: BlockSize = 16,
    num_kv_blocks: NumKvBlocks = None,
    kv_cache_memory: KvCacheMemory = None,
    kv_cache_dtype: KvCacheDtype = "auto",
    max_num_seqs: MaxNumSeqs = 64,
    max_num_batched_tokens: MaxBatchedTokens = 2048,
    enable_prefix_caching: PrefixCaching = True,
    enable_chunked_prefill: ChunkedPrefill = True,
    threads: Threads = None,
    quantization: Quantization = "none",
    group_size: GroupSize = "auto",
    speculative_method: SpeculativeMethod = "none",
    speculative_model: SpeculativeModel = None,
    num_speculative_tokens: NumSpeculativeTokens = 4,
    ngram_max: NgramMax = 4,
    ngram_min: NgramMin = 1,
) -> None:
    """Measure TTFT, TPOT, ITL and throughput of the engine, a URL, or the transformers baselines."""
    from llmctl.agent.bench import BenchOptions, run_bench
    from llmctl.agent.bench_workload import workload_arg
    from llmctl.agent.engine.errors import EngineError

    if model is None and url is None:
        fail("give --model (in-process engine and baselines) or --url (a running server)")
    try:
        kind, spec = workload_arg(workload)
        options = BenchOptions.from_cli(
            requests=requests, input_len=input_len, output_len=output_len,
            shared_prefix_len=shared_prefix_len, request_rate=request_rate, seed=seed,
            baselines=baselines, hf_batch_size=hf_batch_size, url=url,
            compare_prefix_caching=compare_prefix_caching, run_engine=not no_engine,
            compare_quantization=compare_quantization, compare_speculative=compare_speculative,
            baseline_first=baseline_first, isolate_runs=isolate_runs,
            json_path=json_path, workload=spec, workload_kind=kind,
        )
        config = None
        if model is not None:
            config = engine_config(
                model, dtype=dtype, block_size=block_size, num_kv_blocks=num_kv_blocks,
                kv_cache_memory=kv_cache_memory, kv_cache_dtype=kv_cache_dtype, max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                enable_prefix_caching=enable_prefix_caching,
                enable_chunked_prefill=enable_chunked_prefill, num_threads=threads,
                **quant_flags(quantization, group_size),
                **spec_flags(speculative_method, speculative_model, num_speculative_tokens, ngram_max, ngram_min),
            )
        run_bench(options, config)
    except (EngineError, ValueError) as exc:
        fail(str(exc))


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Registered model name, e.g. smollm2-135m")],
    force: Annotated[bool, typer.Option("--force", help="Fetch and convert again")] = False,
) -> None:
    """Fetch a registered model, verify it and cache a converted copy."""
    from llmctl.agent.engine.errors import EngineError
    from llmctl.agent.models import pull

    try:
        path = pull(name, force=force)
    except EngineError as exc:
        fail(str(exc))
    typer.echo(f"{name}: {path}")


@models_app.command("list")
def models_list() -> None:
    """Show registered models and what is cached, with sizes."""
    from llmctl.agent.models import print_model_list

    print_model_list()
