"""The quality-sampling protocol end to end, as real processes: a control plane and one agent serve SmolLM2
as deployment "chat", sampled at 100% with auto-rollback; a client sends greedy chat requests through the
gateway while the deployment moves through revisions (float reference, then e.g. int8 or rtn4).

Used by tests/e2e/test_quality.py (short) and benchmarks/bench_quality_monitor.py (the full protocol,
repeated). Requests go one at a time, and each waits until the quality worker has scored (or dropped) it,
so "detected after N sampled requests" counts requests, not wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cli, Processes, free_port, wait_until

ADMIN_TOKEN = "quality-admin-token"
JOIN_TOKEN = "quality-join-token"
REPLICA_START_S = 300.0
"""SmolLM2 replicas on this 2-core box: spawn, import torch, load (and quantize) the model, warm up."""
ANSWER_TOKENS = 32
ENGINE = ["--dtype", "float32", "--threads", "1", "--max-model-len", "512", "--num-kv-blocks", "96",
          "--max-num-seqs", "4"]


@dataclass
class Phase:
    name: str
    """"reference" (revision 1, float), or a quantization to deploy: "int8", "rtn4"."""
    requests: int
    """Sampled requests to send, at most (a rollback ends the phase early)."""


@dataclass
class PhaseResult:
    name: str
    revision: int
    sent: int = 0
    scored: int = 0
    dropped: int = 0
    degraded_after: int | None = None
    """Sampled requests sent when the revision was first judged degraded; None if it never was."""
    watch_after: int | None = None
    rolled_back_to: int | None = None
    final_state: str = "ok"
    judgement: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class QualityFleet:
    """Control plane + one agent serving SmolLM2 as "chat" with quality sampling at 100% and auto-rollback."""

    def __init__(self, tmp: Path, processes: Processes, model: str) -> None:
        self.tmp, self.processes, self.model = tmp, processes, model
        grpc_port, gateway_port = free_port(), free_port()
        self.control_plane = f"127.0.0.1:{grpc_port}"
        self.gateway = f"http://127.0.0.1:{gateway_port}"
        processes.llmctl(
            "server", "server", "--database-url", f"sqlite:///{tmp / 'llmctl.db'}", "--grpc-port", str(grpc_port),
            "--gateway-port", str(gateway_port), "--admin-token", ADMIN_TOKEN, "--join-token", JOIN_TOKEN,
            "--rollout-timeout", str(REPLICA_START_S), home=tmp / "cp")
        processes.llmctl(
            "agent", "agent", "--control-plane", self.control_plane, "--node-name", "a", "--log-dir",
            # Trials and scorers run beside the serving replicas: more than the box's 2 cores, on purpose.
            str(tmp / "replicas"), "--max-replicas", "4", home=tmp / "node-a", env={"LLMCTL_JOIN_TOKEN": JOIN_TOKEN})
        self.cli = Cli(self.control_plane, ADMIN_TOKEN)
        wait_until("the agent joined", lambda: [n["name"] for n in self.cli.try_json("nodes") or []] == ["a"], 90)

    def deploy(self, quantization: str | None) -> int:
        flags = ["--quantization", quantization] if quantization else []
        out = self.cli.json("deploy", "chat", "--model", self.model, *ENGINE, *flags, "--quality-sample-rate", "1",
                            "--quality-auto-rollback", "--timeout", str(REPLICA_START_S))
        return out["revision"]

    def scorer_ready(self) -> bool:
        replicas = (self.cli.try_json("status", "chat") or {}).get("replicas", [])
        return any(r["role"] == "score" and r["state"] == "READY" for r in replicas)

    def report(self) -> dict[str, Any]:
        return self.cli.json("quality", "chat")

    def current_revision(self) -> int:
        return self.cli.json("status", "chat")["revision"]


def revision_row(report: dict[str, Any], revision: int) -> dict[str, Any]:
    return next((r for r in report["revisions"] if r["revision"] == revision),
                {"samples": 0, "dropped": 0, "pending": 0, "state": "ok", "judgement": {}})


def run_phase(fleet: QualityFleet, client: Any, prompts: list[str], phase: Phase, revision: int) -> PhaseResult:
    """Send the phase's requests one at a time, each waited for until scored, and watch the judgement."""
    result = PhaseResult(phase.name, revision)
    started = time.monotonic()
    for i in range(phase.requests):
        reply = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
            max_tokens=ANSWER_TOKENS, temperature=0)
        assert reply.choices[0].message.content is not None
        result.sent += 1
        row = wait_until(f"sample {result.sent} of revision {revision} scored or dropped",
                         lambda: _caught_up(fleet, revision, result.sent), 120, interval_s=0.2)
        result.scored, result.dropped = row["samples"], row["dropped"]
        result.final_state, result.judgement = row["state"], row["judgement"]
        if row["state"] == "watch" and result.watch_after is None:
            result.watch_after = result.sent
        if row["state"] == "degraded":
            result.degraded_after = result.sent
            result.rolled_back_to = wait_until("the automatic rollback", lambda: _rolled_back(fleet, revision), 30)
            break
    result.seconds = time.monotonic() - started
    return result


def _caught_up(fleet: QualityFleet, revision: int, sent: int) -> dict[str, Any] | None:
    row = revision_row(fleet.report(), revision)
    return row if row["samples"] + row["dropped"] >= sent and row["pending"] == 0 else None


def _rolled_back(fleet: QualityFleet, revision: int) -> int | None:
    current = fleet.current_revision()
    return current if current != revision else None


def run_protocol(tmp: Path, processes: Processes, model: str, phases: list[Phase], prompts: list[str],
                 api_key_tenant: str = "acme") -> list[PhaseResult]:
    """Revision 1 is the float reference; each later phase deploys its quantization as a new revision."""
    from openai import OpenAI

    fleet = QualityFleet(tmp, processes, model)
    results = []
    revision = fleet.deploy(None)
    wait_until("the scorer replica is ready", fleet.scorer_ready, REPLICA_START_S)
    key = fleet.cli.json("tenants", "create", api_key_tenant)["api_key"]
    client = OpenAI(base_url=f"{fleet.gateway}/v1", api_key=key, max_retries=0, timeout=120)
    for phase in phases:
        if phase.name != "reference":
            revision = fleet.deploy(phase.name)
        elif revision != 1:
            revision = 1
            fleet.cli.json("rollback", "chat", "--to", "1", "--wait", "--timeout", str(REPLICA_START_S))
        results.append(run_phase(fleet, client, prompts, phase, revision))
        if results[-1].rolled_back_to is not None:
            revision = results[-1].rolled_back_to
            wait_until("the rollback's replica serves", lambda r=revision: _serving(fleet, r), REPLICA_START_S)
    return results


def _serving(fleet: QualityFleet, revision: int) -> bool:
    deployment = fleet.cli.try_json("status", "chat") or {}
    serving = [r for r in deployment.get("replicas", []) if r["role"] == "serve" and r["state"] == "READY"]
    return bool(serving) and all(r["revision"] == revision for r in serving)
