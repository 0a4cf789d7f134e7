"""`llmctl quantize` and `llmctl eval`: make a quantized checkpoint, and measure what a configuration costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from llmctl.agent.cli import (
    Dtype,
    GroupSize,
    KvCacheDtype,
    NgramMax,
    NgramMin,
    NumSpeculativeTokens,
    Quantization,
    SpeculativeMethod,
    SpeculativeModel,
    Threads,
    engine_config,
    engine_config_object,
    fail,
    given_on_command_line,
    quant_flags,
    spec_flags,
)


def quantize(
    model: Annotated[str, typer.Argument(help="A float model: short name, HF folder, .gguf file or hub id")],
    method: Annotated[str, typer.Option("--method", help="int8 | awq | rtn4")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist or be empty)")],
    calib: Annotated[
        Path | None, typer.Option("--calib", help="Calibration text (.txt, or .jsonl with a text field); awq only")
    ] = None,
    calib_samples: Annotated[
        int | None, typer.Option("--calib-samples", help="Windows of 256 tokens to calibrate on (default 16)")
    ] = None,
    group_size: GroupSize = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Precision to quantize in: float32 | bfloat16 | float16")] = (
        "float32"
    ),
    threads: Threads = None,
) -> None:
    """Quantize a model's linear layers and write a folder that serve, generate, eval and the loader accept."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from llmctl.agent.engine.errors import EngineError
    from llmctl.agent.engine.quantization.checkpoint import quantize_to_folder

    if threads:
        torch.set_num_threads(threads)
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn()) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            report = quantize_to_folder(
                model, method, out, calib=calib, calib_samples=calib_samples,
                group_size=None if group_size == "auto" else group_size, dtype=dtype, progress=progress,
            )
        except EngineError as exc:
            fail(str(exc))
    fp16_bytes = report.float_linear_bytes // torch.tensor([], dtype=getattr(torch, dtype)).element_size() * 2
    ratio = report.linear_weight_bytes / fp16_bytes
    group = f" group size {report.spec.group_size}" if report.spec.group_size else ""
    typer.echo(
        f"{report.spec.method}{group}: linear weights {report.linear_weight_bytes / 2**20:.1f} MiB "
        f"({100 * ratio:.1f}% of fp16)" + (f", calibrated on {report.calibration_tokens} tokens" if
                                            report.calibration_tokens else "")
    )
    typer.echo(f"wrote {report.out}")


# Per-flag engine settings of each side of `llmctl eval`; --dtype and --threads set both sides. The speculative
# flags only reach the candidate's EngineConfig: eval scores logits, which speculation does not change.
CANDIDATE_FLAGS = ("quantization", "group_size", "kv_cache_dtype", "speculative_method", "speculative_model",
                   "num_speculative_tokens", "ngram_max", "ngram_min")
REFERENCE_FLAGS = ("reference_quantization", "reference_kv_cache_dtype")
BOTH_SIDES_FLAGS = ("dtype", "threads")


def side_config_from_json(ctx: typer.Context, flag: str, raw: str, model: str, side_flags: tuple[str, ...]):
    """One side's EngineConfig from a whole-config JSON object (as `llmctl serve --engine-config` takes);
    MODEL (or --reference-model) names the model. Exits 2 if a flag of that side was given beside it."""
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.engine.errors import EngineError

    data = engine_config_object(raw, [f for f in side_flags if given_on_command_line(ctx, f)], flag)
    data["model"] = model
    try:
        return EngineConfig.from_dict(data)
    except (EngineError, TypeError) as exc:
        fail(f"{flag}: {exc}")


def eval_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Short name, HF folder, .gguf file or hub id")],
    quantization: Quantization = "none",
    group_size: GroupSize = "auto",
    kv_cache_dtype: KvCacheDtype = "auto",
    speculative_method: SpeculativeMethod = "none",
    speculative_model: SpeculativeModel = None,
    num_speculative_tokens: NumSpeculativeTokens = 4,
    ngram_max: NgramMax = 4,
    ngram_min: NgramMin = 1,
    reference_model: Annotated[
        str | None, typer.Option("--reference-model", help="Reference checkpoint (default: MODEL)")
    ] = None,
    reference_quantization: Annotated[str, typer.Option("--reference-quantization")] = "none",
    reference_kv_cache_dtype: Annotated[str, typer.Option("--reference-kv-cache-dtype")] = "auto",
    dtype: Dtype = "float32",
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Perplexity text (.txt or .jsonl)")] = None,
    mc: Annotated[Path | None, typer.Option("--mc", help="Multiple-choice JSONL")] = None,
    no_mc: Annotated[bool, typer.Option("--no-mc", help="Skip the multiple-choice set")] = False,
    context_len: Annotated[int, typer.Option("--context-len", help="Tokens per perplexity window")] = 512,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Score at most this many tokens")] = None,
    mc_limit: Annotated[
        int | None, typer.Option("--mc-limit", min=1, help="Score only the first N multiple-choice items")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON")] = None,
    threads: Threads = None,
    engine_config_json: Annotated[
        str | None,
        typer.Option("--engine-config", help="The candidate's whole EngineConfig as JSON, instead of its flags"),
    ] = None,
    reference_engine_config_json: Annotated[
        str | None,
        typer.Option("--reference-engine-config",
                     help="The reference's whole EngineConfig as JSON, instead of its flags"),
    ] = None,
) -> None:
    """Perplexity, KL, top-1 agreement and multiple-choice accuracy of a candidate vs a reference configuration."""
    from rich.console import Console
    from rich.progress import Progress

    from llmctl.agent.engine.engine import LLMEngine
    from llmctl.agent.engine.errors import EngineError
    from llmctl.agent.engine.evaluation import DEFAULT_CORPUS, DEFAULT_MC, EvalOptions, evaluate

    # --dtype/--threads beside two JSON configs would set nothing: refuse them like the per-side flags.
    both = BOTH_SIDES_FLAGS if engine_config_json is not None and reference_engine_config_json is not None else ()
    if engine_config_json is not None:
        cand_cfg = side_config_from_json(ctx, "--engine-config", engine_config_json, model, CANDIDATE_FLAGS + both)
    else:
        cand_cfg = engine_config(model, dtype=dtype, kv_cache_dtype=kv_cache_dtype, num_threads=threads,
                                 **quant_flags(quantization, group_size),
                                 **spec_flags(speculative_method, speculative_model, num_speculative_tokens,
                                              ngram_max, ngram_min))
    if reference_engine_config_json is not None:
        ref_cfg = side_config_from_json(ctx, "--reference-engine-config", reference_engine_config_json,
                                        reference_model or model, REFERENCE_FLAGS + both)
    else:
        ref_cfg = engine_config(reference_model or model, dtype=dtype, kv_cache_dtype=reference_kv_cache_dtype,
                                num_threads=threads, **quant_flags(reference_quantization, "auto"))
    options = EvalOptions(corpus=corpus or DEFAULT_CORPUS, mc=None if no_mc else (mc or DEFAULT_MC),
                          context_len=context_len, max_tokens=max_tokens, mc_limit=mc_limit)
    try:
        # Inputs are checked before either engine loads: a bad file fails in a second, not a minute.
        from llmctl.agent.engine.evaluation import load_mc_items
        from llmctl.agent.engine.quantization.calibration import read_text

        read_text(options.corpus)
        if options.mc is not None:
            load_mc_items(options.mc)
        reference = LLMEngine(ref_cfg)
        candidate = LLMEngine(cand_cfg)
        with Progress(transient=True) as bar:
            task = bar.add_task("scoring", total=None)
            results = evaluate(candidate, reference, options,
                               progress=lambda d, t, what: bar.update(task, completed=d, total=t, description=what))
    except EngineError as exc:
        fail(str(exc))
    Console().print(results_table(results))
    if json_path is not None:
        json_path.write_text(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2) + "\n")


def results_table(results):
    from rich.table import Table

    cand, ref = results["candidate"], results["reference"]
    table = Table(title=f"quality: {cand.num_tokens} tokens, {cand.num_items} multiple-choice items")
    for col in ("metric", "candidate", "reference", "delta"):
        table.add_column(col, justify="left" if col == "metric" else "right")

    def row(name: str, c, r, fmt: str, rel: bool = False) -> None:
        if c is None or r is None:
            table.add_row(name, "-", "-", "-")
            return
        delta = f"{100 * (c / r - 1):+.2f}%" if rel and r else format(c - r, "+" + fmt)
        table.add_row(name, format(c, fmt), format(r, fmt), delta)

    table.add_row("weights", cand.quantization or "float", ref.quantization or "float", "")
    table.add_row("KV cache", cand.kv_cache_dtype, ref.kv_cache_dtype, "")
    row("linear weight MiB", cand.linear_weight_bytes / 2**20, ref.linear_weight_bytes / 2**20, ".1f", rel=True)
    row("linear bytes / fp16", cand.linear_bytes_vs_fp16, ref.linear_bytes_vs_fp16, ".3f")
    row("KV bytes/token", cand.kv_bytes_per_token, ref.kv_bytes_per_token, ".0f", rel=True)
    row("perplexity", cand.perplexity, ref.perplexity, ".3f", rel=True)
    row("KL divergence", cand.kl_divergence, ref.kl_divergence, ".4f")
    row("top-1 agreement", cand.top1_agreement, ref.top1_agreement, ".4f")
    row("accuracy", cand.accuracy, ref.accuracy, ".4f")
    for category in cand.accuracy_by_category:
        row(f"  {category}", cand.accuracy_by_category[category], ref.accuracy_by_category.get(category), ".4f")
    return table
