"""An optimization run's report for people: the per-step table, why each step was kept or not, the same as
markdown, and what the result means for a given daily traffic.

Pure: it reads the report dict (OptimizationRun.report_json, parsed; the shape is in docs/optimizer.md)
and talks to nothing, so the CLI, the dashboard and tests render the same thing. A reading the report does
not have shows as "-", never as a made-up 0.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.table import Table
from rich.text import Text

MIB = 1024 * 1024
SECONDS_PER_DAY = 86_400
HOURS_PER_MONTH = 730
NUMERIC_KEYS = frozenset({"model", "dtype", "kv_cache_dtype", "quantization", "quantization_group_size"})
"""Engine config keys whose change alters what the model computes, so the step needs a quality eval."""
UNMEASURED_STATES = frozenset({"pending", "skipped", "cancelled"})
SHORT_REASON = 28
FRACTION_METRICS = frozenset({"top1_agreement", "accuracy"})
GAIN_LABELS = {"throughput_tok_s": "tok/s", "ttft_p95_ms": "TTFT p95", "tpot_p95_ms": "TPOT p95",
               "memory_bytes": "memory", "cost_per_1m_usd": "$/1M"}

# (table header, markdown header, right-aligned)
COLUMNS = (
    ("#", "#", True),
    ("TECHNIQUE", "Technique", False),
    ("WEIGHTS\nMiB", "Weights MiB", True),
    ("KV\nMiB", "KV MiB", True),
    ("OUT\nTOK/S", "Output tok/s", True),
    ("TTFT ms\np50/p95", "TTFT p50/p95 ms", True),
    ("TPOT ms\np50/p95", "TPOT p50/p95 ms", True),
    ("PPL\nΔ", "Perplexity Δ", True),
    ("TOP-1\nΔ", "Top-1 agreement Δ", True),
    ("$/1M\nOUT TOK", "$ per 1M output tokens", True),
    ("DECISION", "Decision", False),
)


def steps_table(report: dict[str, Any]) -> Table:
    """One row per step with its numbers and a short decision; reasons_table has the full reasons."""
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    for header, _, right in COLUMNS:
        table.add_column(header, justify="right" if right else "left", no_wrap=header != "DECISION",
                         overflow="fold")
    for step in report.get("steps") or []:
        table.add_row(*(Text("-" if cell is None else cell) for cell in step_cells(step, report)))
    return table


def reasons_table(report: dict[str, Any]) -> Table:
    """Per step: the change it tried and its decision with the full reason (and quality numbers, if measured)."""
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("TECHNIQUE", no_wrap=True)
    table.add_column("CHANGE", overflow="fold", max_width=30)
    table.add_column("WHY", overflow="fold", ratio=1)
    for step in report.get("steps") or []:
        why = _state_and_reason(step)
        quality = quality_text(step.get("quality"))
        if quality:
            why += f"\nquality vs reference: {quality}"
        table.add_row(str(step.get("number", "?")), step.get("technique") or "?",
                      change_text(step.get("change")) or "-", Text(why))
    return table


def projection_table(projected: dict[str, Any]) -> Table:
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    for header in ("AT", "OUT TOK/S PER REPLICA", "REPLICAS", "$/MONTH"):
        table.add_column(header, justify="left" if header == "AT" else "right", no_wrap=True)
    for row in _projection_rows(projected):
        table.add_row(*(Text("-" if cell is None else cell) for cell in row))
    return table


def header_lines(report: dict[str, Any], now: float | None = None) -> list[str]:
    """What the run was asked, where it ran and how it stands, one fact per line."""
    options = report.get("options") or {}
    lines = [
        f"optimization run {report.get('id', '?')} of {report.get('deployment', '?')}: "
        f"{report.get('state', '?')}, goal {report.get('goal', '?')}",
        f"workload: {workload_text(report.get('workload'))}"
        + (f" (from the last {options.get('traffic_window_minutes', 60):g} minutes of traffic)"
           if options.get("from_traffic") else ""),
        f"rules: {options_text(options)}",
    ]
    price = report.get("price_per_hour")
    place = report.get("node") or "not placed yet"
    hardware = report.get("gpu") or "no GPU"
    lines.append(f"node: {place} ({hardware}" + (f", ${price:g}/hour)" if price is not None else ")"))
    bottleneck = report.get("bottleneck")
    if bottleneck:
        lines.append(f"bottleneck: {bottleneck.get('name', '?')}: {bottleneck.get('why') or ''}".rstrip(": "))
    lines.append(f"revisions: {revision_text(report)}")
    lines.append(f"wall time: {wall_time(report, now)}")
    if report.get("summary"):
        lines.append(f"summary: {report['summary']}")
    if report.get("error"):
        lines.append(f"error: {report['error']}")
    return lines


def markdown(report: dict[str, Any], tokens_per_day: int | None = None) -> str:
    """The report as GitHub markdown: header facts, the steps table, every reason, and the projection."""
    head, *facts = header_lines(report)
    out = [f"### {head}", "", *(f"- {fact}" for fact in facts), ""]
    out.append("| " + " | ".join(md for _, md, _ in COLUMNS) + " |")
    out.append("|" + "|".join("---:" if right else "---" for _, _, right in COLUMNS) + "|")
    for step in report.get("steps") or []:
        out.append("| " + " | ".join(_md_cell(cell) for cell in step_cells(step, report)) + " |")
    out += ["", "Decisions:", ""]
    for step in report.get("steps") or []:
        change = change_text(step.get("change"))
        line = (f"- {step.get('number', '?')} **{step.get('technique', '?')}**"
                + (f" (`{change}`)" if change else "")
                + f" {_state_and_reason(step)}")
        quality = quality_text(step.get("quality"))
        out.append(line + (f"; quality vs reference: {quality}" if quality else ""))
    if tokens_per_day is not None:
        projected = projection(report, tokens_per_day)
        price = projected["price_per_hour"]
        priced = f"${price:g} per replica-hour" if price is not None else "no price known"
        out += ["", f"At {tokens_per_day:,} output tokens per day ({priced}, {HOURS_PER_MONTH} hours a month):", "",
                "| At | Output tok/s per replica | Replicas | $ per month |", "|---|---:|---:|---:|"]
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in _projection_rows(projected)]
    return "\n".join(out) + "\n"


def projection(report: dict[str, Any], tokens_per_day: int) -> dict[str, Any]:
    """Replicas and monthly cost to serve `tokens_per_day` output tokens at the baseline and at the result
    (the last kept step), each replica at its measured saturated throughput. ValueError when the baseline
    has no throughput yet."""
    if isinstance(tokens_per_day, bool) or not isinstance(tokens_per_day, int) or tokens_per_day <= 0:
        raise ValueError(f"tokens per day must be a positive integer, got {tokens_per_day!r}")
    steps = report.get("steps") or []
    baseline = next((s for s in steps if s.get("technique") == "baseline"), None)
    if baseline is None or not (baseline.get("metrics") or {}).get("throughput_tok_s"):
        raise ValueError(f"run {report.get('id', '?')} has no baseline throughput to project from yet")
    result = last_kept(report) or baseline
    if not (result.get("metrics") or {}).get("throughput_tok_s"):
        raise ValueError(f"step {result.get('number', '?')} of run {report.get('id', '?')} has no throughput")
    price = report.get("price_per_hour")
    at = {name: _serve(step, tokens_per_day, price) for name, step in (("baseline", baseline), ("result", result))}
    cost_before, cost_after = at["baseline"]["monthly_usd"], at["result"]["monthly_usd"]
    saved = None if cost_before is None or cost_after is None else cost_before - cost_after
    return {
        "tokens_per_day": tokens_per_day, "price_per_hour": price, "hours_per_month": HOURS_PER_MONTH, **at,
        "savings": {
            "replicas": at["baseline"]["replicas"] - at["result"]["replicas"],
            "monthly_usd": saved,
            "fraction": saved / cost_before if saved is not None and cost_before else None,
        },
    }


def summary_line(report: dict[str, Any]) -> str:
    """One line for listings: the state, what was kept (with its gain) and what was not."""
    steps = [s for s in report.get("steps") or [] if s.get("technique") != "baseline"]
    by_state: dict[str, list[str]] = {}
    for step in steps:
        name = step.get("technique", "?")
        if step.get("state") == "kept" and step.get("gain"):
            name += f" ({gain_text(step['gain'])})"
        by_state.setdefault(step.get("state", "?"), []).append(name)
    parts = [f"run {report.get('id', '?')} of {report.get('deployment', '?')} ({report.get('goal', '?')}): "
             f"{report.get('state', '?')}"]
    for state in ("running", "kept", "rejected", "failed", "skipped"):
        if by_state.get(state):
            parts.append(f"{state} {', '.join(by_state[state])}")
    if report.get("state") != "running":
        parts.append(f"revisions {revision_text(report)}")
    return "; ".join(parts)


def step_line(step: dict[str, Any]) -> str:
    """A step as a progress line: `step 1 kv-cache-size (num_kv_blocks=128): kept: <reason>`."""
    change = change_text(step.get("change"))
    line = f"step {step.get('number', '?')} {step.get('technique', '?')}" + (f" ({change})" if change else "")
    line += f": {step.get('state', '?')}"
    if step.get("reason") and step.get("state") not in ("pending", "running"):
        line += f": {step['reason']}"
    return line


def step_cells(step: dict[str, Any], report: dict[str, Any]) -> list[str | None]:
    metrics = step.get("metrics") or {}
    ppl, top1 = _quality_cells(step)
    return [
        str(step.get("number", "?")),
        step.get("technique") or "?",
        _mib(metrics.get("weights_bytes")),
        _mib(metrics.get("kv_bytes")),
        _fixed(metrics.get("throughput_tok_s"), 1),
        _pair(metrics.get("ttft_p50_ms"), metrics.get("ttft_p95_ms")),
        _pair(metrics.get("tpot_p50_ms"), metrics.get("tpot_p95_ms")),
        ppl,
        top1,
        _money(metrics.get("cost_per_1m_usd")),
        decision(step, report.get("options") or {}),
    ]


def decision(step: dict[str, Any], options: dict[str, Any]) -> str:
    """The short decision for the table: kept (+gain), rejected: why in a word or two, skipped: why, ..."""
    state = step.get("state") or "?"
    if step.get("technique") == "baseline":
        return "baseline" if state == "kept" else f"{state}: {_short(step.get('reason'))}".rstrip(": ")
    if state == "kept":
        return f"kept ({gain_text(step['gain'])})" if step.get("gain") else "kept"
    if state == "rejected":
        return f"rejected: {_rejection(step, options)}"
    if state == "running":
        return "running ..."
    if state in ("pending", "cancelled"):
        return state
    return f"{state}: {_short(step.get('reason'))}".rstrip(": ")


def gain_text(gain: dict[str, Any]) -> str:
    """`tok/s +38.1%`, `TTFT p95 -12.0%`: the goal metric's own move (a gain is "better", so a latency,
    memory or cost gain shows as a decrease)."""
    metric = gain.get("metric") or ""
    moved = gain.get("estimate") or 0.0
    if not gain.get("higher_is_better", True):
        moved = -moved
    return f"{GAIN_LABELS.get(metric, metric)} {moved:+.1%}".strip()


def last_kept(report: dict[str, Any]) -> dict[str, Any] | None:
    """The last kept step after the baseline: the configuration the run ends with (None: nothing kept)."""
    kept = [s for s in report.get("steps") or [] if s.get("state") == "kept" and s.get("technique") != "baseline"]
    return kept[-1] if kept else None


def quality_text(quality: dict[str, Any] | None) -> str:
    """`perplexity 15.500 vs 15.470 (drop 0.16%), top-1 agreement ...`; "" when not measured."""
    if not quality:
        return ""
    names = {"perplexity": "perplexity", "kl_divergence": "KL divergence", "top1_agreement": "top-1 agreement",
             "accuracy": "multiple-choice accuracy"}
    parts = []
    for key, value in quality.items():
        if not isinstance(value, dict):
            continue
        show = _fraction if key in FRACTION_METRICS else _g4
        text = f"{names.get(key, key)} {show(value.get('candidate'))} vs {show(value.get('reference'))}"
        if value.get("drop") is not None:
            text += f" (drop {_percent(value['drop'], signed=False)})"
        parts.append(text)
    return ", ".join(parts)


def change_text(change: dict[str, Any] | None) -> str:
    return " ".join(f"{key}={value}" for key, value in (change or {}).items())


def workload_text(workload: dict[str, Any] | None) -> str:
    if not workload:
        return "-"
    rate = workload.get("request_rate")
    arrival = "all at once" if rate in ("inf", None) else f"{rate:g} requests/s"
    return (f"{workload.get('requests', '?')} requests, prompts of {_span(workload.get('input_len'))} tokens, "
            f"outputs of {_span(workload.get('output_len'))} tokens, shared prefix "
            f"{workload.get('shared_prefix_len', 0)} tokens, {arrival}, seed {workload.get('seed', 0)}")


def options_text(options: dict[str, Any]) -> str:
    parts = [f"quality drop at most {_plain_percent(options.get('max_quality_drop'))}",
             f"gain at least {_plain_percent(options.get('min_gain'))} (95% lower bound)"]
    for key, name in (("slo_ttft_p95_ms", "TTFT"), ("slo_tpot_p95_ms", "TPOT")):
        if options.get(key) is not None:
            parts.append(f"{name} p95 <= {options[key]:g} ms")
    if options.get("techniques"):
        parts.append(f"techniques {', '.join(options['techniques'])}")
    if options.get("repeats") is not None:
        parts.append(f"{options['repeats']} repeats")
    if options.get("budget_minutes") is not None:
        parts.append(f"budget {options['budget_minutes']:g} min")
    if options.get("advisory"):
        parts.append("advisory (no revision)")
    return ", ".join(parts)


def revision_text(report: dict[str, Any]) -> str:
    before, after = report.get("baseline_revision"), report.get("result_revision")
    if after is not None and after != before:
        return f"{before if before is not None else '?'} -> {after}"
    if report.get("state") == "running":
        return f"{before if before is not None else '?'} (serving while the run measures)"
    if (report.get("options") or {}).get("advisory") and last_kept(report):
        return f"{before if before is not None else '?'} unchanged (advisory: nothing deployed)"
    return f"{before if before is not None else '?'} unchanged"


def wall_time(report: dict[str, Any], now: float | None = None) -> str:
    started, finished = report.get("created_at"), report.get("finished_at")
    if not started:
        return "-"
    seconds = max(0.0, (finished or (now if now is not None else time.time())) - started)
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
    return text if finished else f"{text} so far"


def _state_and_reason(step: dict[str, Any]) -> str:
    state = step.get("state") or "?"
    return f"{state}: {step['reason']}" if step.get("reason") else state


def _rejection(step: dict[str, Any], options: dict[str, Any]) -> str:
    """Why a step was rejected, in a word or two, from its numbers; the reason text says it in full."""
    allowed = options.get("max_quality_drop")
    quality = step.get("quality") or {}
    if allowed is not None and any(isinstance(v, dict) and (v.get("drop") or 0) > allowed for v in quality.values()):
        return "quality"
    metrics = step.get("metrics") or {}
    for key, name in (("slo_ttft_p95_ms", "ttft_p95_ms"), ("slo_tpot_p95_ms", "tpot_p95_ms")):
        limit, value = options.get(key), metrics.get(name)
        if limit is not None and value is not None and value > limit:
            return f"{name[:4].upper()} SLO"
    gain = step.get("gain") or {}
    if gain.get("high") is not None and gain["high"] < 0:
        return "worse"
    if gain.get("low") is not None and gain["low"] <= (options.get("min_gain") or 0):
        return "no gain"
    return _short(step.get("reason")) or "?"


def _quality_cells(step: dict[str, Any]) -> tuple[str | None, str | None]:
    """(perplexity change, top-1 agreement change) as signed percents; "=" where the step's change cannot
    alter what the model computes, "-" where quality was not measured."""
    quality = step.get("quality")
    if quality is None:
        unchanged = (step.get("technique") != "baseline" and step.get("state") not in UNMEASURED_STATES
                     and not NUMERIC_KEYS & set(step.get("change") or {}))
        return ("=", "=") if unchanged else (None, None)
    ppl, top1 = quality.get("perplexity") or {}, quality.get("top1_agreement") or {}
    return (None if ppl.get("drop") is None else _percent(ppl["drop"]),
            None if top1.get("drop") is None else _percent(-top1["drop"]))


def _serve(step: dict[str, Any], tokens_per_day: int, price: float | None) -> dict[str, Any]:
    throughput = (step.get("metrics") or {}).get("throughput_tok_s") or 0.0
    replicas = math.ceil(tokens_per_day / (throughput * SECONDS_PER_DAY))
    return {"step": step.get("number"), "technique": step.get("technique"), "throughput_tok_s": throughput,
            "replicas": replicas, "monthly_usd": None if price is None else replicas * price * HOURS_PER_MONTH}


def _projection_rows(projected: dict[str, Any]) -> list[list[str | None]]:
    rows = []
    for name in ("baseline", "result"):
        at = projected[name]
        label = "baseline" if name == "baseline" else f"result (step {at['step']} {at['technique']})"
        rows.append([label, _fixed(at["throughput_tok_s"], 1), str(at["replicas"]), _dollars(at["monthly_usd"])])
    saved = projected["savings"]
    fraction = saved["fraction"]
    rows.append(["saved" + (f" ({fraction:.0%})" if fraction is not None else ""), None,
                 str(saved["replicas"]), _dollars(saved["monthly_usd"])])
    return rows


def _short(reason: str | None) -> str:
    """A reason's first clause, cut to fit the table's decision column."""
    text = " ".join((reason or "").split())
    for stop in ("; ", " (", ": "):
        text = text.split(stop, 1)[0]
    return text if len(text) <= SHORT_REASON else text[: SHORT_REASON - 1] + "…"


def _md_cell(cell: str | None) -> str:
    return "-" if cell is None else cell.replace("|", "\\|").replace("\n", " ")


def _mib(value: float | None) -> str | None:
    return None if value is None else f"{value / MIB:.1f}"


def _fixed(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _pair(p50: float | None, p95: float | None) -> str | None:
    return None if p50 is None and p95 is None else f"{_ms(p50)}/{_ms(p95)}"


def _percent(fraction: float | None, signed: bool = True) -> str:
    if fraction is None:
        return "-"
    digits = 2 if abs(fraction) < 0.01 else 1
    return f"{100 * fraction:{'+' if signed else ''}.{digits}f}%"


def _plain_percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:g}%"


def _money(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _dollars(value: float | None) -> str | None:
    return None if value is None else f"${value:,.2f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _g4(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _span(bounds: Any) -> str:
    if isinstance(bounds, list | tuple) and len(bounds) == 2:
        return str(bounds[0]) if bounds[0] == bounds[1] else f"{bounds[0]}..{bounds[1]}"
    return str(bounds)
