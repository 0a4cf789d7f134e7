"""The pure half of benchmarks/load.py: guidellm's JSON report, the tap's lines and the gateway's counters
turned into one row per concurrency level, the soak's RSS samples into one row per process, and the verdict.

No I/O beyond reading the files it is given, so tests/test_load_report.py runs it on a recorded report.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RSS_GROWTH_LIMIT = 0.10
"""The soak fails when a process's resident memory at the end exceeds its start by more than this fraction."""

DELIBERATE = {429, 503}
"""Statuses the gateway sends on purpose when it is overloaded or a limit is spent (with Retry-After)."""

_STATUS = re.compile(r"'(\d{3}) [^']*' for url")
"""httpx's HTTPStatusError text, which guidellm keeps as `repr(exc)`: "Server error '503 Service Unavailable'
for url '...'"."""

_CANCELLED = "Request was cancelled"


@dataclass
class Level:
    """One guidellm benchmark (a concurrency level, or the soak) as the tables show it."""

    streams: int
    seconds: float
    requests: int
    ok: int
    incomplete: int
    """Still running when the level's time bound cancelled them: neither answered nor failed."""
    errors: dict[str, int]
    """Errored requests by HTTP status ("503") or, without one, by exception type ("ReadTimeout")."""
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    ttft_n: int
    output_tokens_per_s: float
    tap: dict[str, int] = field(default_factory=dict)
    """Every HTTP answer guidellm got, by status (benchmarks/load_tap)."""
    without_retry_after: dict[str, int] = field(default_factory=dict)
    """429s and 503s that came without a Retry-After header."""
    gateway: dict[str, int] = field(default_factory=dict)
    """The gateway's own count of answers by status over the level (llmctl_gateway_requests); it alone sees a
    stream that broke after its 200 (counted 502: the client got an error event, not an HTTP error)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_kind(error: str | None) -> str:
    """"503" for an HTTP error, else the exception's type name ("ReadTimeout", "RemoteProtocolError")."""
    text = error or ""
    if match := _STATUS.search(text):
        return match.group(1)
    return text.split("(", 1)[0].strip() or "unknown"


def parse_benchmark(bench: dict[str, Any]) -> Level:
    """One entry of a guidellm report's `benchmarks` (GenerativeBenchmark, report version 2)."""
    metrics = bench["metrics"]
    totals = metrics["request_totals"]
    errored = [r for r in bench["requests"]["errored"] if (r["info"].get("error") or "") != _CANCELLED]
    errors = Counter(error_kind(r["info"].get("error")) for r in errored)
    ttft = (metrics["time_to_first_token_ms"] or {}).get("successful") or {}
    seconds = bench["duration"]
    out_tokens = ((metrics["output_token_count"] or {}).get("successful") or {}).get("total_sum") or 0.0
    return Level(
        streams=int(bench["config"]["strategy"]["streams"]),
        seconds=round(seconds, 1),
        requests=int(totals["total"]),
        ok=int(totals["successful"]),
        incomplete=int(totals["incomplete"]),
        errors=dict(sorted(errors.items())),
        ttft_p50_ms=_rounded(ttft, "p50"),
        ttft_p99_ms=_rounded(ttft, "p99"),
        ttft_n=int(ttft.get("count") or 0),
        output_tokens_per_s=round(out_tokens / seconds, 1) if seconds > 0 else 0.0,
    )


def _rounded(summary: dict[str, Any], percentile: str) -> float | None:
    if not summary.get("count"):
        return None
    return round(summary["percentiles"][percentile], 1)


def parse_report(path: Path) -> list[Level]:
    report = json.loads(Path(path).read_text())
    return [parse_benchmark(b) for b in report["benchmarks"]]


def read_tap(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(generation answers by status, 429s/503s without Retry-After by status) from the tap's JSON lines;
    guidellm's own /health and /v1/models calls are left out of the first."""
    statuses: Counter[str] = Counter()
    bare: Counter[str] = Counter()
    if not Path(path).exists():
        return {}, {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        answer = json.loads(line)
        status = answer["status"]
        if answer.get("path", "").endswith("/completions"):
            statuses[str(status)] += 1
        if status in DELIBERATE and not answer.get("retry_after"):
            bare[str(status)] += 1
    return dict(sorted(statuses.items())), dict(sorted(bare.items()))


def gateway_counts(metrics_text: str, deployment: str) -> dict[str, int]:
    """llmctl_gateway_requests_total by code for one deployment, from the gateway's /metrics text."""
    counts: dict[str, int] = {}
    pattern = re.compile(r'^llmctl_gateway_requests_total\{([^}]*)\} ([0-9.e+]+)$')
    for line in metrics_text.splitlines():
        if match := pattern.match(line):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if labels.get("deployment") == deployment:
                counts[labels["code"]] = counts.get(labels["code"], 0) + int(float(match.group(2)))
    return counts


def counts_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {code: n - before.get(code, 0) for code, n in sorted(after.items()) if n - before.get(code, 0)}


def level_failures(level: Level, name: str) -> list[str]:
    """Why a level fails: a 5xx that is not a 503 with Retry-After (seen by the client or counted by the
    gateway), a request that failed without any HTTP status, an unexpected 4xx, or no answer at all."""
    found = []
    for kind, n in level.errors.items():
        if not kind.isdigit():
            found.append(f"{name}: {n} request(s) failed without an HTTP status ({kind})")
        elif int(kind) not in DELIBERATE:
            found.append(f"{name}: {n} x HTTP {kind}")
    for status, n in level.without_retry_after.items():
        found.append(f"{name}: {n} x HTTP {status} without Retry-After")
    for code, n in level.gateway.items():
        if int(code) >= 500 and int(code) != 503 and code not in level.errors:
            found.append(f"{name}: the gateway counted {n} x {code} (a stream that broke after its 200)")
    if level.ok == 0:
        found.append(f"{name}: no request succeeded")
    return found


@dataclass
class ProcessRss:
    """One process's resident memory over the soak."""

    name: str
    pid: int
    start_mib: float
    end_mib: float
    max_mib: float
    growth: float
    """end / start - 1."""
    samples: int
    whole_soak: bool
    """Seen in the first and the last sample: False for a process that died or was started during the soak."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_rss(samples: list[tuple[float, str, int, int]], window_s: float = 60.0) -> list[ProcessRss]:
    """Samples are (time, process name, pid, rss bytes). Start and end are the medians of each process's
    samples in the first and the last `window_s` seconds of the soak, so one sample taken mid-allocation
    does not decide the verdict."""
    if not samples:
        return []
    t0, t1 = min(s[0] for s in samples), max(s[0] for s in samples)
    by_process: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for t, name, pid, rss in samples:
        by_process.setdefault((name, pid), []).append((t, rss))
    rows = []
    for (name, pid), points in sorted(by_process.items()):
        points.sort()
        first = [rss for t, rss in points if t <= points[0][0] + window_s]
        last = [rss for t, rss in points if t >= points[-1][0] - window_s]
        start, end = statistics.median(first), statistics.median(last)
        rows.append(ProcessRss(
            name=name, pid=pid, start_mib=_mib(start), end_mib=_mib(end), max_mib=_mib(max(r for _, r in points)),
            growth=round(end / start - 1, 4), samples=len(points),
            whole_soak=points[0][0] <= t0 + window_s and points[-1][0] >= t1 - window_s,
        ))
    return rows


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def rss_failures(rows: list[ProcessRss], limit: float = RSS_GROWTH_LIMIT) -> list[str]:
    found = []
    for row in rows:
        if row.growth > limit:
            found.append(f"soak: {row.name} (pid {row.pid}) RSS grew {row.growth:+.1%} "
                         f"({row.start_mib} -> {row.end_mib} MiB), over {limit:.0%}")
        if not row.whole_soak:
            found.append(f"soak: {row.name} (pid {row.pid}) did not run for the whole soak (restarted?)")
    return found


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def level_table(levels: list[Level]) -> str:
    header = ("streams", "s", "requests", "ok", "cut", "4xx", "5xx", "other err", "TTFT p50 ms", "TTFT p99 ms",
              "out tok/s", "gateway codes")
    rows = []
    for lv in levels:
        four = {k: n for k, n in lv.errors.items() if k.startswith("4")}
        five = {k: n for k, n in lv.errors.items() if k.startswith("5")}
        other = sum(n for k, n in lv.errors.items() if not k.isdigit())
        rows.append((str(lv.streams), f"{lv.seconds:.0f}", str(lv.requests), str(lv.ok), str(lv.incomplete),
                     _codes(four), _codes(five), str(other), _ms(lv.ttft_p50_ms), _ms(lv.ttft_p99_ms),
                     f"{lv.output_tokens_per_s:.1f}", _codes(lv.gateway)))
    return markdown_table(header, rows)


def rss_table(rows: list[ProcessRss]) -> str:
    header = ("process", "pid", "start MiB", "end MiB", "max MiB", "change", "samples")
    return markdown_table(header, [(r.name, str(r.pid), f"{r.start_mib:.1f}", f"{r.end_mib:.1f}", f"{r.max_mib:.1f}",
                                    f"{r.growth:+.1%}", str(r.samples)) for r in rows])


def _codes(counts: dict[str, int]) -> str:
    return " ".join(f"{code}:{n}" for code, n in counts.items()) or "0"


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
