"""`llmctl autoscale simulate`: a day of traffic through the real policy code against fixed provisioning at
peak, recorded traces, and the command's table, JSON and PNG. The full day runs once (about 3 s); the rest use
traces of minutes or hours."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmctl.controlplane.autoscaling.policy import AutoscalePolicy
from llmctl.controlplane.autoscaling.simulate import (
    Comparison,
    ReplicaModel,
    Trace,
    TraceError,
    compare,
    diurnal_trace,
    load_trace,
    simulate,
)
from llmctl.controlplane.cli import app

# What `llmctl autoscale simulate` runs without flags: the policy's defaults within 1-8 replicas, SmolLM2's
# measured replica (8 at once x 3 s), 120 s cold starts, a 2 s queue-wait SLO.
DEFAULT_POLICY = AutoscalePolicy(min_replicas=1, max_replicas=8)
DEFAULT_REPLICA = ReplicaModel(cold_start_s=120, max_concurrency=8, service_s=3.0)


@pytest.fixture(scope="module")
def day() -> Comparison:
    return compare(diurnal_trace(seed=0, peak_rps=8), DEFAULT_POLICY, DEFAULT_REPLICA)


def test_the_default_policy_uses_at_least_40_percent_fewer_replica_hours_than_fixed_at_peak(day: Comparison):
    assert day.trace.startswith("diurnal") and day.autoscaled.arrived > 300_000
    assert day.fixed_replicas == 8 and day.fixed.replica_hours == pytest.approx(8 * 24)
    hours = f"autoscaled {day.autoscaled.replica_hours:.1f} h vs fixed {day.fixed.replica_hours} h"
    assert day.saving >= 0.40, hours
    assert day.autoscaled.max_replicas <= 8
    assert day.fixed.slo_misses <= 0.01  # fixed at peak is the yardstick: it meets the SLO


def test_the_default_policy_keeps_queue_wait_slo_misses_at_or_under_1_percent(day: Comparison):
    # This trace (seed 0) only: over seeds 0-4 the misses range 0-1.16% (docs/autoscaling.md, Simulation).
    assert day.autoscaled.slo_misses <= 0.01, f"{100 * day.autoscaled.slo_misses:.2f}% missed"


def test_no_request_is_lost_when_replicas_stop_with_requests_in_flight():
    # busy (3-4 replicas), quiet (down to 1 while requests run), then a rush still queued at the end
    counts = np.concatenate([np.full(200, 8), np.full(200, 2), np.full(20, 30)]).astype(np.int64)
    policy = AutoscalePolicy(min_replicas=1, max_replicas=4, scale_up_window_s=0, scale_down_window_s=20)
    result = simulate(Trace(counts, "busy, quiet, rush"), ReplicaModel(cold_start_s=10), policy=policy)
    downs = [e for e in result.events if e.desired < e.current]
    assert downs and result.queued_at_end > 0
    assert result.served + result.queued_at_end + result.in_flight_at_end == result.arrived == counts.sum()


def test_a_burst_shorter_than_the_up_window_starts_no_replica():
    def burst(seconds: int) -> Trace:
        counts = np.ones(600, dtype=np.int64)  # 1 req/s: one replica (2.67 req/s) at 37%
        counts[120:120 + seconds] = 4
        return Trace(counts, f"{seconds} s burst")

    short = simulate(burst(10), DEFAULT_REPLICA, policy=DEFAULT_POLICY)  # the up window is 30 s
    assert short.scale_events == 0 and short.max_replicas == 1
    long = simulate(burst(120), DEFAULT_REPLICA, policy=DEFAULT_POLICY)
    assert long.events[0].desired > 1 and long.events[0].at_s >= 120 + 30


def test_a_recorded_trace_round_trips_through_csv_and_json(tmp_path: Path):
    trace = diurnal_trace(seed=3, peak_rps=8, duration_s=3600)
    times = trace.arrival_times()
    (tmp_path / "arrivals.csv").write_text("arrival_s\n" + "".join(f"{t:.3f}\n" for t in times))
    (tmp_path / "arrivals.json").write_text(json.dumps((times + 0.25).tolist()))
    (tmp_path / "epoch.csv").write_text("".join(f"{t + 1_767_225_600:.3f}\n" for t in times))
    for name in ("arrivals.csv", "arrivals.json"):
        loaded = load_trace(tmp_path / name)
        # a file's trace ends with its last arrival
        assert np.array_equal(loaded.counts, np.trim_zeros(trace.counts, "b")), name
    epoch = load_trace(tmp_path / "epoch.csv")  # epoch seconds: the trace starts at the first arrival
    assert np.array_equal(epoch.counts, np.trim_zeros(trace.counts)) and epoch.total == trace.total
    a = simulate(load_trace(tmp_path / "arrivals.csv"), DEFAULT_REPLICA, policy=DEFAULT_POLICY)
    b = simulate(load_trace(tmp_path / "arrivals.json"), DEFAULT_REPLICA, policy=DEFAULT_POLICY)
    assert (a.replica_hours, a.slo_misses, a.events) == (b.replica_hours, b.slo_misses, b.events)


@pytest.mark.parametrize("text, words", [
    ("arrival_s\n0.5\n1.0\nsoon\n", "line 4: 'soon' is not an arrival timestamp"),
    ('{"arrivals": [1, 2]}', "expected a JSON list of arrival timestamps"),
    ("[1, 2,", "is not valid JSON"),
    ("", "holds no arrivals"),
    ("1.0\n-2\n", "arrival #2 is -2.0; timestamps must be finite seconds >= 0"),
    ('[1, "two"]', "expected a JSON list of arrival timestamps"),
])
def test_a_malformed_trace_file_is_refused_with_what_to_fix(tmp_path: Path, text: str, words: str):
    path = tmp_path / "trace.txt"
    path.write_text(text)
    with pytest.raises(TraceError, match="trace.txt") as e:
        load_trace(path)
    assert words in str(e.value)
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "missing.csv")


def test_the_command_prints_the_table_and_writes_json_and_a_png(tmp_path: Path):
    trace = tmp_path / "afternoon.csv"
    afternoon = Trace(diurnal_trace(seed=0, peak_rps=8).counts[13 * 3600:15 * 3600], "afternoon")
    trace.write_text("\n".join(f"{t:g}" for t in afternoon.arrival_times()))
    png, out_json = tmp_path / "day.png", tmp_path / "day.json"
    result = CliRunner().invoke(app, ["autoscale", "simulate", "--trace", str(trace), "--cold-start", "2m",
                                      "--png", str(png), "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "PROVISIONING REPLICA-HOURS SAVING P50 WAIT P99 WAIT WAIT > 2s MAX REPLICAS SCALE EVENTS" in text
    assert "autoscaled" in text and "fixed at peak (" in text and "busiest minute" in text
    assert "hour of the trace" in text  # the terminal plot
    found = json.loads(out_json.read_text())
    assert found["replica_model"] == {"cold_start_s": 120.0, "max_concurrency": 8, "service_s": 3.0,
                                      "throughput_rps": 2.6667}
    assert found["autoscaled"]["arrived"] == afternoon.total and len(found["minutes"]["asked"]) == 120
    assert f"{found['autoscaled']['replica_hours']:.1f}" in text
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1000, 500)  # IHDR width, height


def test_the_command_refuses_a_bad_trace_and_flags_that_need_simulate(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("0\n1\nlater\n")
    result = CliRunner().invoke(app, ["autoscale", "simulate", "--trace", str(bad)])
    assert result.exit_code == 2 and "line 3: 'later' is not an arrival timestamp" in result.output
    result = CliRunner().invoke(app, ["autoscale", "simulate", "--min", "5", "--max", "2"])
    assert result.exit_code == 2 and "min <= max" in result.output
    result = CliRunner().invoke(app, ["autoscale", "chat", "--trace", str(bad), "--control-plane",
                                      "127.0.0.1:9"])
    assert result.exit_code == 2 and "--trace goes only with `llmctl autoscale simulate`" in result.output
