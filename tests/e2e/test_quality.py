"""Quality sampling end to end with real processes and SmolLM2: the float reference raises no alarm, a 4-bit
rtn4 revision (about +26% perplexity) is judged degraded and rolled back automatically; an opted-out tenant's
requests never reach the database. The full protocol (200 reference and 200 int8 requests, repeated) is
benchmarks/bench_quality_monitor.py; its numbers are in docs/quality.md."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.quality_calibration import build_prompts
from tests.e2e.conftest import Processes
from tests.e2e.quality_protocol import Phase, QualityFleet, run_phase, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.protocol]

PRIVATE_PROMPT = "My account number is 4417-1234; what should I do?"


def test_a_degraded_revision_is_caught_and_rolled_back_and_the_reference_is_not(
    tmp_path: Path, smollm2_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai import OpenAI

    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "operator"))
    fleet = QualityFleet(tmp_path, processes, str(smollm2_path))
    assert fleet.deploy(None) == 1
    wait_until("the scorer replica is ready", fleet.scorer_ready, 300)
    status = fleet.cli.json("status", "chat")
    assert sorted(r["role"] for r in status["replicas"]) == ["score", "serve"]
    assert status["quality"] == {"sample_rate": 1.0, "auto_rollback": True, "threshold": 0.1,
                                 "reference_revision": 1}
    prompts = build_prompts(100)

    private_key = fleet.cli.json("tenants", "create", "private", "--quality-opt-out")["api_key"]
    private = OpenAI(base_url=f"{fleet.gateway}/v1", api_key=private_key, max_retries=0, timeout=120)
    for _ in range(3):
        private.chat.completions.create(model="chat", messages=[{"role": "user", "content": PRIVATE_PROMPT}],
                                        max_tokens=8)
    key = fleet.cli.json("tenants", "create", "acme")["api_key"]
    client = OpenAI(base_url=f"{fleet.gateway}/v1", api_key=key, max_retries=0, timeout=120)

    reference = run_phase(fleet, client, prompts, Phase("reference", 15), 1)
    assert (reference.sent, reference.scored, reference.degraded_after) == (15, 15, None), reference
    assert reference.final_state == "ok"

    assert fleet.deploy("rtn4") == 2
    degraded = run_phase(fleet, client, prompts[15:], Phase("rtn4", 100), 2)
    assert degraded.degraded_after is not None and degraded.rolled_back_to == 1, degraded

    revisions = fleet.cli.json("revisions", "chat")
    assert [(r["number"], r["current"], (r["quality"] or {}).get("state")) for r in revisions["revisions"]] == [
        (1, True, "ok"), (2, False, "degraded")]
    events = fleet.cli.json("events", "--deployment", "chat")
    rollback = [e for e in events if e["kind"] == "deployment.rolled_back"]
    assert rollback and rollback[-1]["details"]["reason"].startswith("quality auto-rollback: revision 2 is degraded")
    report = fleet.cli.json("quality", "chat")
    row = next(r for r in report["revisions"] if r["revision"] == 2)
    assert row["mean_logprob"]["mean"] < row["baseline_mean_logprob"]["mean"]
    metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(httpx.get(f"{fleet.gateway}/metrics").text)
               for s in family.samples}
    assert metrics[("llmctl_quality_state", (("deployment", "chat"), ("revision", "2")))] == 2
    assert metrics[("llmctl_quality_samples_total", (("deployment", "chat"),))] >= 16

    # The opted-out tenant's requests were answered but never stored.
    with sqlite3.connect(tmp_path / "llmctl.db") as db:
        (private_id,) = db.execute("SELECT id FROM tenants WHERE name = 'private'").fetchone()
        stored = db.execute("SELECT tenant_id, request, answer FROM quality_samples").fetchall()
    assert stored and all(tenant != private_id for tenant, _, _ in stored)
    assert not any("4417-1234" in request for _, request, _ in stored)
    print(f"\nrtn4 judged degraded after {degraded.degraded_after} sampled requests; "
          f"reference {reference.sent} requests, state {reference.final_state}")
