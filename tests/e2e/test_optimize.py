"""`llmctl optimize` end to end with real processes and SmolLM2: a deployment whose KV pool is far too small
for its workload (it preempts) gets a larger pool kept beyond noise, int8 KV (within 2% on quality, but the
larger pool already holds everything) rejected for no gain, int8 weights and 4-bit AWQ rejected for quality
with their numbers, and the kept result rolled out as revision 2. The
control plane is restarted in the middle of the run and carries on. The recorded run (the bottleneck picks
the techniques, 3 repeats) is benchmarks/bench_optimize.py; its report is in docs/optimizer.md."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Processes, stop
from tests.e2e.optimize_protocol import TECHNIQUES, OptimizeFleet, wait_until

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 1500.0


def test_optimize_keeps_a_real_gain_rejects_awq_for_quality_and_rolls_out_the_result(
    tmp_path: Path, smollm2_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "operator"))
    fleet = OptimizeFleet(tmp_path, processes, str(smollm2_path))
    assert fleet.deploy() == 1
    serving_before = [r["id"] for r in fleet.serving()]
    started = time.monotonic()
    run_id = fleet.optimize("--techniques", TECHNIQUES, "--repeats", "2")

    # A restart of the control plane once the baseline is measured: the run goes on from SQL.
    wait_until("the baseline is measured", lambda: (fleet.report(run_id) or {}).get("bottleneck"), 600, 2.0)
    stop(fleet.server)
    fleet.server = fleet.start_server()
    report = fleet.wait(run_id, RUN_TIMEOUT_S)
    wall_s = time.monotonic() - started

    steps = {s["technique"]: s for s in report["steps"]}
    lines = [f"{s['number']} {s['technique']}: {s['state']}: {s['reason']}" for s in report["steps"]]
    assert report["state"] == "succeeded", "\n".join([report["summary"], *lines])
    assert report["bottleneck"]["name"] == "kv-memory"
    assert steps["baseline"]["metrics"]["preemptions"] > 0
    tried = [s for s in report["steps"] if s["number"] > 0 and s["state"] in ("kept", "rejected")]
    assert len(tried) >= 4, lines
    kept = [s for s in tried if s["state"] == "kept"]
    assert kept and all(s["gain"]["low"] > 0.05 for s in kept), lines
    assert steps["kv-cache-size"]["state"] == "kept", lines
    assert any("no gain beyond noise" in s["reason"] for s in tried if s["state"] == "rejected"), lines
    awq = steps["awq"]
    assert awq["state"] == "rejected" and "quality: perplexity" in awq["reason"], lines
    assert awq["quality"]["perplexity"]["drop"] > 0.02

    # The kept result is revision 2, rolled out by the normal rollout; trial replicas are gone.
    assert report["result_revision"] == 2
    wait_until("revision 2 serves", lambda: [r["revision"] for r in fleet.serving() if r["state"] == "READY"]
               == [2], 300)
    wait_until("trial replicas stopped", lambda: not fleet.trial_replicas(), 120)
    wait_until("revision 1's replica gone", lambda: not {r["id"] for r in fleet.serving()} & set(serving_before), 120)
    revisions = fleet.cli.json("revisions", "chat")["revisions"]
    assert [(r["number"], r["created_by"]) for r in revisions] == [(1, "admin"), (2, "optimizer")]
    table = fleet.cli("optimize", "report", str(run_id), "--format", "markdown")
    assert "kv-cache-size" in table and "awq" in table
    print(f"\noptimize run {run_id}: {wall_s:.0f} s wall\n{table}")
