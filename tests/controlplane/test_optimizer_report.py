"""An optimization report shows an operator every number and reason behind each step, and what it saves."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from llmctl.controlplane.optimizer.report import (
    markdown,
    projection,
    projection_table,
    reasons_table,
    steps_table,
    summary_line,
)

MIB = 1024 * 1024


def _metrics(throughput: float, ttft: tuple[float, float], tpot: tuple[float, float], kv_mib: float,
             cost: float, preemptions: float) -> dict:
    return {"throughput_tok_s": throughput, "ttft_p50_ms": ttft[0], "ttft_p95_ms": ttft[1],
            "tpot_p50_ms": tpot[0], "tpot_p95_ms": tpot[1], "itl_p95_ms": tpot[1] * 1.5,
            "preemptions": preemptions, "weights_bytes": 513 * MIB, "kv_bytes": int(kv_mib * MIB),
            "cost_per_1m_usd": cost}


BASELINE = _metrics(81.2, (900.1, 2100.0), (61.0, 80.2), 4.5, 0.171, 41.0)
BIGGER_KV = _metrics(112.1, (640.0, 1510.0), (52.3, 66.0), 9.0, 0.124, 0.0)


def make_report(**overrides) -> dict:
    """A finished throughput run: baseline, a kept KV-size step, a step with no gain, AWQ rejected for quality,
    prefix caching skipped."""
    report = {
        "id": 3, "deployment": "demo", "state": "succeeded", "goal": "throughput",
        "created_at": 1_765_000_000.0, "finished_at": 1_765_000_000.0 + 23 * 60 + 10,
        "summary": "kept kv-cache-size (+38.1%); revision 2 serving", "error": None,
        "options": {"max_quality_drop": 0.02, "min_gain": 0.05, "slo_ttft_p95_ms": None, "slo_tpot_p95_ms": None,
                    "techniques": None, "advisory": False, "budget_minutes": 60, "repeats": 3},
        "workload": {"requests": 24, "input_len": [32, 128], "output_len": [32, 96], "shared_prefix_len": 0,
                     "request_rate": "inf", "seed": 0},
        "node": "node-a", "gpu": None, "price_per_hour": 0.05,
        "bottleneck": {"name": "kv-memory", "why": "the baseline preempted 41 sequences with its KV pool 97% full"},
        "baseline_revision": 1, "result_revision": 2,
        "steps": [
            {"number": 0, "technique": "baseline", "state": "kept", "reason": "the starting point", "change": {},
             "metrics": BASELINE, "gain": None, "quality": None, "measurements": []},
            {"number": 1, "technique": "kv-cache-size", "state": "kept",
             "reason": "throughput +38.1% (95% interval +30.2% .. +46.0%) beyond the 5% minimum; quality "
                       "unchanged: the KV pool size does not change what the model computes",
             "change": {"num_kv_blocks": 128}, "metrics": BIGGER_KV, "baseline_metrics": BASELINE,
             "gain": {"estimate": 0.381, "low": 0.302, "high": 0.46, "pairs": 3, "metric": "throughput_tok_s",
                      "higher_is_better": True},
             "quality": None, "measurements": []},
            {"number": 2, "technique": "max-num-seqs", "state": "rejected",
             "reason": "throughput +1.2% (95% interval -3.0% .. +5.4%) does not clear the 5% minimum",
             "change": {"max_num_seqs": 32}, "metrics": _metrics(113.4, (655.0, 1530.0), (51.9, 65.1), 9.0, 0.122, 0),
             "baseline_metrics": BIGGER_KV,
             "gain": {"estimate": 0.012, "low": -0.03, "high": 0.054, "pairs": 3, "metric": "throughput_tok_s",
                      "higher_is_better": True},
             "quality": None, "measurements": []},
            {"number": 3, "technique": "awq", "state": "rejected",
             "reason": "quality: top-1 agreement dropped 6.1% (more than the 2% allowed); not measured for speed",
             "change": {"quantization": "awq"}, "metrics": None, "gain": None,
             "quality": {"perplexity": {"candidate": 17.02, "reference": 15.47, "drop": 0.1002},
                         "kl_divergence": {"candidate": 0.081, "reference": 0.0, "drop": 0.081},
                         "top1_agreement": {"candidate": 0.939, "reference": 1.0, "drop": 0.061},
                         "accuracy": {"candidate": 0.533, "reference": 0.567, "drop": 0.034}},
             "measurements": []},
            {"number": 4, "technique": "prefix-caching", "state": "skipped",
             "reason": "the workload shares no prompt prefix (shared_prefix_len 0)", "change": {},
             "metrics": None, "gain": None, "quality": None, "measurements": []},
        ],
    }
    report.update(overrides)
    return report


def render(renderable, width: int = 120) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"), highlight=False)  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def rows_by_step(text: str) -> dict[str, str]:
    """Table lines keyed by their step number (a wrapped row would leave lines with no number)."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = {}
    for line in lines[2:]:  # two header lines
        number = line.split()[0]
        assert number.isdigit(), f"a row wrapped onto a second line: {line!r}"
        rows[number] = line
    return rows


def test_steps_table_fits_120_columns_one_line_per_step_with_its_numbers():
    text = render(steps_table(make_report()))
    assert max(len(line) for line in text.splitlines()) <= 120
    rows = rows_by_step(text)
    assert sorted(rows) == ["0", "1", "2", "3", "4"]
    baseline = rows["0"].split()
    assert baseline[:7] == ["0", "baseline", "513.0", "4.5", "81.2", "900/2100", "61.0/80.2"]
    assert "0.171" in baseline and "baseline" in baseline[-1]
    kept = rows["1"]
    for number in ("kv-cache-size", "9.0", "112.1", "640/1510", "52.3/66.0", "0.124", "kept (tok/s +38.1%)"):
        assert number in kept
    assert kept.split()[7:9] == ["=", "="]  # an engine knob: quality cannot change
    assert "rejected: no gain" in rows["2"]
    awq = rows["3"].split()
    assert awq[2:7] == ["-"] * 5  # rejected for quality before any speed measurement
    assert awq[7:9] == ["+10.0%", "-6.1%"]
    assert "rejected: quality" in rows["3"]
    assert rows["4"].split()[2:9] == ["-"] * 7
    assert "skipped: the workload shares no" in rows["4"]


def test_reasons_give_each_decision_in_full_with_the_quality_numbers():
    text = " ".join(render(reasons_table(make_report())).split())
    assert "num_kv_blocks=128" in text
    assert "kept: throughput +38.1% (95% interval +30.2% .. +46.0%) beyond the 5% minimum" in text
    assert "rejected: throughput +1.2% (95% interval -3.0% .. +5.4%) does not clear the 5% minimum" in text
    assert "quantization=awq" in text
    assert "top-1 agreement dropped 6.1% (more than the 2% allowed)" in text
    assert "perplexity 17.02 vs 15.47 (drop 10.0%)" in text
    assert "top-1 agreement 0.939 vs 1.000 (drop 6.1%)" in text
    assert "KL divergence 0.081 vs 0 (drop 8.1%)" in text
    assert "skipped: the workload shares no prompt prefix" in text


def test_markdown_has_the_header_facts_the_table_and_every_reason():
    text = markdown(make_report())
    assert "optimization run 3 of demo: succeeded, goal throughput" in text
    assert "- bottleneck: kv-memory: the baseline preempted 41 sequences" in text
    assert "- revisions: 1 -> 2" in text
    assert "- wall time: 23m 10s" in text
    assert "24 requests, prompts of 32..128 tokens, outputs of 32..96 tokens" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 5
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "| 1 | kv-cache-size | 513.0 | 9.0 | 112.1 | 640/1510 | 52.3/66.0 | = | = | 0.124 | kept (tok/s +38.1%) |" in text
    assert "| 3 | awq | 513.0 |" not in text  # no speed numbers for a quality rejection
    assert "| 3 | awq | - | - | - | - | - | +10.0% | -6.1% | - | rejected: quality |" in text
    assert "- 2 **max-num-seqs** (`max_num_seqs=32`) rejected: throughput +1.2%" in text
    assert "multiple-choice accuracy 0.533 vs 0.567 (drop 3.4%)" in text
    assert "output tokens per day" not in text


def test_projection_counts_replicas_at_saturated_throughput_and_monthly_cost():
    per_day = 50_000_000
    got = projection(make_report(), per_day)
    assert got["baseline"]["replicas"] == math.ceil(per_day / (81.2 * 86_400)) == 8
    assert got["result"]["replicas"] == math.ceil(per_day / (112.1 * 86_400)) == 6
    assert got["result"]["technique"] == "kv-cache-size"
    assert got["baseline"]["monthly_usd"] == pytest.approx(8 * 0.05 * 730)
    assert got["result"]["monthly_usd"] == pytest.approx(6 * 0.05 * 730)
    assert got["savings"]["replicas"] == 2
    assert got["savings"]["monthly_usd"] == pytest.approx(2 * 0.05 * 730)
    assert got["savings"]["fraction"] == pytest.approx(0.25)
    json.dumps(got)  # goes into `--format json` as is
    text = " ".join(render(projection_table(got)).split())
    assert "baseline 81.2 8 $292.00" in text
    assert "result (step 1 kv-cache-size) 112.1 6 $219.00" in text
    assert "saved (25%) - 2 $73.00" in text
    md = markdown(make_report(), tokens_per_day=per_day)
    assert "At 50,000,000 output tokens per day ($0.05 per replica-hour, 730 hours a month)" in md
    assert "| result (step 1 kv-cache-size) | 112.1 | 6 | $219.00 |" in md


def test_projection_with_nothing_kept_is_the_baseline_and_without_a_baseline_refuses():
    report = make_report()
    report["steps"][1]["state"] = "rejected"
    got = projection(report, 1_000_000)
    assert got["result"]["technique"] == "baseline" and got["savings"]["monthly_usd"] == 0
    report["steps"] = []
    with pytest.raises(ValueError, match="no baseline throughput"):
        projection(report, 1_000_000)


def test_a_running_run_shows_the_step_in_progress_and_elapsed_time():
    report = make_report(state="running", finished_at=None, result_revision=None)
    report["steps"][4].update(state="running", reason="")
    text = render(steps_table(report))
    assert "running ..." in rows_by_step(text)["4"]
    md = markdown(report)
    assert "so far" in md and "1 (serving while the run measures)" in md
    line = summary_line(report)
    assert line.startswith("run 3 of demo (throughput): running")
    assert "running prefix-caching" in line


def test_summary_line_names_what_was_kept_and_rejected():
    line = summary_line(make_report())
    assert line == ("run 3 of demo (throughput): succeeded; kept kv-cache-size (tok/s +38.1%); rejected max-num-seqs, awq; "
                    "skipped prefix-caching; revisions 1 -> 2")


def test_advisory_run_says_nothing_was_deployed():
    report = make_report(result_revision=None)
    report["options"]["advisory"] = True
    assert "- revisions: 1 unchanged (advisory: nothing deployed)" in markdown(report)


def test_a_latency_gain_reads_as_the_decrease_it_is():
    report = make_report(goal="latency")
    report["steps"][1]["gain"] = {"metric": "ttft_p95_ms", "estimate": 0.12, "low": 0.08, "high": 0.16, "pairs": 3,
                                  "higher_is_better": False}
    assert "kept (TTFT p95 -12.0%)" in rows_by_step(render(steps_table(report)))["1"]
    assert "kept kv-cache-size (TTFT p95 -12.0%)" in summary_line(report)
