"""benchmarks/load.py's pure half (benchmarks/load_report.py): a recorded guidellm 0.8.1 report parses into the
level the tables show, and the verdict tells deliberate rejections from failures and a flat RSS from a leak.
guidellm itself lives in .venv-load, which CI does not install, so nothing here runs it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.load_report import (
    Level,
    counts_delta,
    error_kind,
    gateway_counts,
    level_failures,
    level_table,
    parse_report,
    read_tap,
    rss_failures,
    summarize_rss,
)

DATA = Path(__file__).parent / "data"


def test_a_recorded_guidellm_report_parses_into_one_level_per_benchmark():
    (level,) = parse_report(DATA / "guidellm-report.json")
    assert level.streams == 2
    assert level.requests == 5 and level.ok == 5 and level.incomplete == 0 and level.errors == {}
    assert level.ttft_n == 5 and 0 < level.ttft_p50_ms <= level.ttft_p99_ms
    assert level.output_tokens_per_s > 0 and level.seconds > 0
    assert level_failures(level, "2 streams") == []
    assert "| 2 |" in level_table([level])


def test_http_errors_are_classified_by_status_and_the_rest_by_exception_type():
    assert error_kind("HTTPStatusError(\"Server error '503 Service Unavailable' for url 'http://x/v1/chat/completions'"
                      "\\nFor more information check: https://x/503\")") == "503"
    assert error_kind("HTTPStatusError(\"Client error '429 Too Many Requests' for url 'http://x'\")") == "429"
    assert error_kind("ReadTimeout('')") == "ReadTimeout"
    assert error_kind("RemoteProtocolError('peer closed connection')") == "RemoteProtocolError"
    assert error_kind(None) == "unknown"


def level(**overrides) -> Level:
    fields = dict(streams=4, seconds=10.0, requests=10, ok=10, incomplete=0, errors={}, ttft_p50_ms=50.0,
                  ttft_p99_ms=90.0, ttft_n=10, output_tokens_per_s=100.0)
    return Level(**{**fields, **overrides})


def test_only_503s_and_429s_with_retry_after_pass_the_verdict():
    assert level_failures(level(ok=8, errors={"503": 1, "429": 1}, tap={"200": 8, "503": 1, "429": 1}), "x") == []
    assert level_failures(level(ok=9, errors={"503": 1}, without_retry_after={"503": 1}), "x") == [
        "x: 1 x HTTP 503 without Retry-After"]
    assert level_failures(level(ok=9, errors={"500": 1}), "x") == ["x: 1 x HTTP 500"]
    assert level_failures(level(ok=9, errors={"404": 1}), "x") == ["x: 1 x HTTP 404"]
    assert level_failures(level(ok=9, errors={"ReadTimeout": 1}), "x") == [
        "x: 1 request(s) failed without an HTTP status (ReadTimeout)"]
    # A stream that broke after its 200: only the gateway's counter shows it.
    assert level_failures(level(gateway={"200": 9, "502": 1}), "x") == [
        "x: the gateway counted 1 x 502 (a stream that broke after its 200)"]
    assert level_failures(level(ok=0, incomplete=10), "x") == ["x: no request succeeded"]


def test_the_tap_counts_answers_and_the_rejections_without_retry_after(tmp_path):
    tap = tmp_path / "tap.jsonl"
    lines = [{"t": 0.5, "status": 200, "retry_after": None, "path": "/health"}]
    lines += [{"t": 1.0, "status": 200, "retry_after": None, "path": "/v1/chat/completions"}] * 3
    lines += [{"t": 2.0, "status": 503, "retry_after": "30", "path": "/v1/chat/completions"},
              {"t": 3.0, "status": 429, "retry_after": None, "path": "/v1/chat/completions"}]
    tap.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_tap(tap) == ({"200": 3, "429": 1, "503": 1}, {"429": 1})
    assert read_tap(tmp_path / "absent.jsonl") == ({}, {})


def test_gateway_counters_are_read_per_deployment_and_differenced():
    text = "\n".join([
        "# TYPE llmctl_gateway_requests_total counter",
        'llmctl_gateway_requests_total{code="200",deployment="chat"} 12.0',
        'llmctl_gateway_requests_total{code="503",deployment="chat"} 1.0',
        'llmctl_gateway_requests_total{code="200",deployment="other"} 5.0',
        'llmctl_gateway_requests_created{code="200",deployment="chat"} 1.7e+09',
    ])
    assert gateway_counts(text, "chat") == {"200": 12, "503": 1}
    assert counts_delta({"200": 2, "503": 1}, {"200": 12, "503": 1, "502": 1}) == {"200": 10, "502": 1}


def samples(name: str, pid: int, mib: list[float], t0: float = 0.0, step: float = 5.0):
    return [(t0 + i * step, name, pid, int(m * 2**20)) for i, m in enumerate(mib)]


def test_rss_flat_within_ten_percent_passes_and_growth_or_a_restart_fails():
    flat = samples("server", 10, [300] * 12 + [310] * 12 + [320] * 12)  # 175 s: +6.7%
    grows = samples("replica", 11, [500] * 12 + [540] * 12 + [560] * 12)  # +12%
    rows = {r.name: r for r in summarize_rss(flat + grows, window_s=60)}
    assert rows["server"].start_mib == 300 and rows["server"].end_mib == 320 and rows["server"].growth < 0.10
    assert rows["replica"].max_mib == 560 and rows["replica"].samples == 36
    assert rss_failures([rows["server"]]) == []
    assert rss_failures([rows["replica"]]) == ["soak: replica (pid 11) RSS grew +12.0% (500.0 -> 560.0 MiB), over 10%"]
    late = samples("replica", 12, [400] * 10, t0=100.0)  # a replica started mid-soak
    (row,) = [r for r in summarize_rss(flat + late, window_s=60) if r.pid == 12]
    assert not row.whole_soak
    assert rss_failures([row]) == ["soak: replica (pid 12) did not run for the whole soak (restarted?)"]
