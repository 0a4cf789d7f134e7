"""`llmctl traffic` and `llmctl optimize --from-traffic` against a real, in-process control plane (gRPC,
SQLite); traffic rows are written with the service the gateway uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from llmctl.controlplane.db.models import utcnow
from llmctl.controlplane.db.session import make_engine, session_factory, session_scope
from llmctl.controlplane.server import ControlPlane
from llmctl.controlplane.services import traffic
from tests.controlplane.cli_plane import llmctl, running_control_plane


@pytest.fixture
def control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path, monkeypatch) as cp:
        yield cp



def record(cp: ControlPlane, count: int, name: str = "chat") -> None:
    """`count` requests, one a second up to now: prompts of 100.. tokens sharing 64, outputs of 10.."""
    engine = make_engine(cp.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            now = utcnow()
            for i in range(count):
                traffic.record(session, deployment_name=name, arrived_at=now - timedelta(seconds=count - i),
                               prompt_tokens=100 + i, completion_tokens=10 + i, shared_prefix_tokens=64)
    finally:
        engine.dispose()


def test_traffic_shows_the_shape_and_the_workload_it_makes(control_plane: ControlPlane) -> None:
    cp = control_plane
    assert llmctl(cp, "deploy", "chat", "--model", "tiny", "--no-wait")[0] == 0
    code, output = llmctl(cp, "traffic", "chat")
    assert code == 0, output
    assert "chat: 0 requests in the last 60m" in output and "no recorded traffic in this window" in output

    record(cp, 12)
    code, output = llmctl(cp, "traffic", "chat", "--window", "2h")
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].startswith("chat: 12 requests in the last 2h (") and "1 req/s while it came" in lines[0]
    table = {line.split("  ")[0].strip(): line.split()[-4:] for line in lines[1:6] if line.strip()}
    assert table["prompt tokens"] == ["105.5", "105", "111", "111"]
    assert table["shared prefix tokens"] == ["64", "64", "64", "64"]
    assert "shared prefixes: 61% of prompt tokens repeat the start of an earlier prompt" in output
    assert ("synthetic workload (llmctl optimize chat --from-traffic): 12 requests, prompts of 64 shared + 36-47 "
            "tokens, outputs of 10-21 tokens, 1 req/s, seed 0") in output

    data = json.loads(llmctl(cp, "traffic", "chat", "-o", "json")[1])
    assert data["requests"] == 12 and data["request_rate"] == pytest.approx(1.0, rel=1e-3)
    assert data["completion_tokens"] == {"mean": 15.5, "p50": 15.0, "p95": 21.0, "max": 21.0}
    assert sorted(map(tuple, data["workload"]["lengths"])) == [(36 + i, 10 + i) for i in range(12)]
    assert data["workload_error"] is None and data["workload_speedup"] is None

    # The last 5 seconds hold too few requests for a workload; the table says why.
    code, output = llmctl(cp, "traffic", "chat", "--window", "5s")
    assert code == 0 and "no synthetic workload: deployment chat saw only 4 requests in the last" in output


def test_from_traffic_refuses_too_little_traffic_and_bad_flags(control_plane: ControlPlane,
                                                                tmp_path: Path) -> None:
    cp = control_plane
    assert llmctl(cp, "deploy", "chat", "--model", "tiny", "--no-wait")[0] == 0
    record(cp, 3)
    code, output = llmctl(cp, "optimize", "chat", "--goal", "throughput", "--from-traffic", "--detach")
    assert code == 2
    assert "error: deployment chat saw only 3 requests in the last 60 minutes (8 needed); send traffic or give " \
           "--workload FILE" in " ".join(output.split())
    assert "no optimization runs" in llmctl(cp, "optimize", "list")[1]

    spec = tmp_path / "workload.json"
    spec.write_text("{}")
    for flags, message in ((["--from-traffic", "--workload", str(spec)], "give --workload FILE or --from-traffic"),
                           (["--traffic-window", "2h"], "--traffic-window needs --from-traffic"),
                           (["--from-traffic", "--traffic-window", "soon"], "--traffic-window takes a duration")):
        code, output = llmctl(cp, "optimize", "chat", "--goal", "throughput", *flags)
        assert code == 2 and message in output, output
    code, output = llmctl(cp, "traffic", "chat", "--window", "0m")
    assert code == 2 and "--window takes a duration like 90s, 60m, 2h or 1d" in output
    code, output = llmctl(cp, "traffic", "nope")
    assert code == 2 and "deployment 'nope' not found" in output
