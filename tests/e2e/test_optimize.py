"""`llmctl optimize` end to end with real processes and SmolLM2, on a deployment whose KV pool is far too small
for its workload (it preempts). The control plane is restarted in the middle of each run and carries on.

- In `make test`: the larger pool is kept beyond noise, fp8 KV is rejected for quality with its numbers before
  any speed measurement, and the result rolls out as revision 2 with no trial replica left (about 4 minutes,
  3 repeats as by default).
- The full protocol (`make test-e2e`, about 9 minutes): four techniques: the larger pool kept, int8 KV (within
  2% on quality) rejected for no gain, int8 weights and 4-bit AWQ rejected for quality. The run recorded in
  docs/optimizer.md is benchmarks/bench_optimize.py (the bottleneck picks the techniques, 3 repeats)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Processes, stop
from tests.e2e.optimize_protocol import TECHNIQUES, OptimizeFleet, wait_until

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 1500.0


def optimize_with_a_restart(tmp_path: Path, processes: Processes, model: Path,
                            techniques: str) -> tuple[OptimizeFleet, int, dict[str, Any], list[str]]:
    fleet = OptimizeFleet(tmp_path, processes, str(model))
    assert fleet.deploy() == 1
    serving_before = [r["id"] for r in fleet.serving()]
    started = time.monotonic()
    run_id = fleet.optimize("--techniques", techniques, "--repeats", "3")
    # A restart of the control plane once the baseline is measured: the run goes on from SQL.
    wait_until("the baseline is measured", lambda: (fleet.report(run_id) or {}).get("bottleneck"), 600, 2.0)
    stop(fleet.server)
    fleet.server = fleet.start_server()
    report = fleet.wait(run_id, RUN_TIMEOUT_S)
    lines = [f"{s['number']} {s['technique']}: {s['state']}: {s['reason']}" for s in report["steps"]]
    assert report["state"] == "succeeded", "\n".join([report["summary"], *lines])
    assert report["bottleneck"]["name"] == "kv-memory"
    assert report["steps"][0]["metrics"]["preemptions"] > 0
    steps = {s["technique"]: s for s in report["steps"]}
    kept = steps["kv-cache-size"]
    assert kept["state"] == "kept" and kept["gain"]["low"] > 0.05, lines

    # The kept result is revision 2, rolled out by the normal rollout; trial replicas are gone.
    assert report["result_revision"] == 2
    wait_until("revision 2 serves", lambda: [r["revision"] for r in fleet.serving() if r["state"] == "READY"]
               == [2], 300)
    wait_until("trial replicas stopped", lambda: not fleet.trial_replicas(), 120)
    wait_until("revision 1's replica gone", lambda: not {r["id"] for r in fleet.serving()} & set(serving_before), 120)
    revisions = fleet.cli.json("revisions", "chat")["revisions"]
    assert [(r["number"], r["created_by"]) for r in revisions] == [(1, "admin"), (2, "optimizer")]
    table = fleet.cli("optimize", "report", str(run_id), "--format", "markdown")
    print(f"\noptimize run {run_id}: {time.monotonic() - started:.0f} s wall\n{table}")
    return fleet, run_id, report, lines


# On 2026-12-07 one clean-clone run of two saw kv-cache-size rejected for quality, accuracy 0.600 vs 0.617 (one
# item of the eval set flipped by a larger KV pool's other batch shapes) against a 2% bar; the judge now asks an
# accuracy drop to be beyond that noise too (judge.quality_drops: McNemar on the items' verdicts).
# Then CI saw the pool kept at +57% but rejected for noise: with 2 repeats the interval has 1 degree of freedom
# (t = 12.7), so two pairs that disagree (a loaded box) put the lower bound below zero. The run uses the
# product's default of 3 repeats (t = 4.3): +199% (95% interval +178% .. +222%) here, 47 s more.
def test_optimize_keeps_a_larger_kv_pool_rejects_fp8_kv_for_quality_and_rolls_out_the_result(
    tmp_path: Path, smollm2_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "operator"))
    _, _, report, lines = optimize_with_a_restart(tmp_path, processes, smollm2_path, "kv-cache-size,kv-fp8")
    fp8 = report["steps"][2]
    assert fp8["technique"] == "kv-fp8" and fp8["state"] == "rejected", lines
    assert "quality: top-1 agreement" in fp8["reason"] and fp8["quality"]["top1_agreement"]["drop"] > 0.02
    assert not [m for m in fp8["measurements"] if m["kind"] == "bench"], "quality is checked before speed"


@pytest.mark.protocol
def test_optimize_tries_four_techniques_keeps_a_real_gain_and_rejects_awq_for_quality(
    tmp_path: Path, smollm2_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "operator"))
    _, _, report, lines = optimize_with_a_restart(tmp_path, processes, smollm2_path, TECHNIQUES)
    tried = [s for s in report["steps"] if s["number"] > 0 and s["state"] in ("kept", "rejected")]
    assert len(tried) >= 4, lines
    assert all(s["gain"]["low"] > 0.05 for s in tried if s["state"] == "kept"), lines
    assert any("no gain beyond noise" in s["reason"] for s in tried if s["state"] == "rejected"), lines
    awq = next(s for s in report["steps"] if s["technique"] == "awq")
    assert awq["state"] == "rejected" and "quality: perplexity" in awq["reason"], lines
    assert awq["quality"]["perplexity"]["drop"] > 0.02
