"""The fleet end to end: a control plane and two agents as real processes on loopback, driven by `llmctl`.

deploy -> chat through the gateway -> roll out a new engine config under streaming load (no request
fails) -> roll back -> SIGKILL an agent (its replicas move to the other node) -> restart the control
plane (state comes back from SQL; the surviving agent reconnects; the deployment keeps serving).
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import Cli, Processes, free_port, wait_until

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "e2e-admin-token"
JOIN_TOKEN = "e2e-join-token"
NODE_TIMEOUT_S = 6.0
REPLICA_START_S = 120.0
"""A replica on this 2-core box: spawn, import torch, load the tiny model, warm up; several at once."""


def ready_replicas(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in deployment["replicas"] if r["state"] == "READY"]


def replica_configs(agents: list[psutil.Process]) -> list[dict[str, Any]]:
    """The --engine-config each running replica process was started with (what really serves)."""
    configs = []
    for agent in agents:
        try:
            children = agent.children()
        except psutil.Error:
            continue
        for child in children:
            try:
                args = child.cmdline()
            except psutil.Error:
                continue
            if "serve" in args and "--engine-config" in args:
                configs.append(json.loads(args[args.index("--engine-config") + 1]))
    return configs


class Chatter(threading.Thread):
    """Streams chat completions in a loop until stopped; records every failure."""

    def __init__(self, client: Any):
        super().__init__(daemon=True)
        self.client = client
        self.done, self.failures = 0, []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                stream = self.client.chat.completions.create(
                    model="chat",
                    messages=[{"role": "user", "content": "Paged attention"}],
                    max_tokens=6,
                    stream=True,
                )
                finish = [c.choices[0].finish_reason for c in stream if c.choices]
                assert finish and finish[-1] in ("stop", "length"), finish
                self.done += 1
            except Exception as e:  # every kind of failure counts
                self.failures.append(repr(e))


def test_fleet_survives_rollout_rollback_node_loss_and_restart(
    tmp_path: Path, tiny_llama: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai import OpenAI

    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "operator"))
    grpc_port, gateway_port = free_port(), free_port()
    control_plane, gateway = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{gateway_port}"
    server_args = [
        "server",
        "--database-url",
        f"sqlite:///{tmp_path / 'llmctl.db'}",
        "--grpc-port",
        str(grpc_port),
        "--gateway-port",
        str(gateway_port),
        "--admin-token",
        ADMIN_TOKEN,
        "--join-token",
        JOIN_TOKEN,
        "--node-timeout",
        str(NODE_TIMEOUT_S),
        "--rollout-timeout",
        str(REPLICA_START_S),
    ]
    server = processes.llmctl("server", *server_args, home=tmp_path / "cp")
    agents = {
        name: processes.llmctl(
            f"agent-{name}",
            "agent",
            "--control-plane",
            control_plane,
            "--node-name",
            name,
            "--log-dir",
            str(tmp_path / f"replicas-{name}"),
            # Two agents on one 2-core box, each taking the other's replicas on failover: room beyond its cores.
            "--max-replicas",
            "4",
            home=tmp_path / f"node-{name}",
            env={"LLMCTL_JOIN_TOKEN": JOIN_TOKEN},
        )
        for name in ("a", "b")
    }
    llmctl = Cli(control_plane, ADMIN_TOKEN)

    def nodes() -> dict[str, str]:
        return {n["name"]: n["state"] for n in llmctl.try_json("nodes") or []}

    wait_until("both agents joined", lambda: nodes() == {"a": "healthy", "b": "healthy"}, 60)

    # 1. Deploy two replicas; a tenant created with the CLI chats through the gateway.
    # Quality sampling off: this test counts and places replicas, and a sampling deployment adds a scorer
    # replica (tests/e2e/test_quality.py runs rollouts with one).
    engine = ["--threads", "1", "--num-kv-blocks", "64", "--max-model-len", "256", "--quality-sample-rate", "0"]
    out = llmctl.json(
        "deploy",
        "chat",
        "--model",
        str(tiny_llama),
        "--replicas",
        "2",
        "--max-num-seqs",
        "4",
        *engine,
        "--timeout",
        str(REPLICA_START_S),
    )
    assert out["revision"] == 1 and out["created_revision"]
    deployment = llmctl.json("status", "chat")
    assert sorted(r["node"] for r in ready_replicas(deployment)) == ["a", "b"]
    api_key = llmctl.json("tenants", "create", "acme", "--rpm", "10000")["api_key"]
    client = OpenAI(base_url=f"{gateway}/v1", api_key=api_key, max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    agent_procs = [psutil.Process(p.pid) for p in agents.values()]
    assert [c["max_num_seqs"] for c in replica_configs(agent_procs)] == [4, 4]

    # 2. A new revision rolls out while a client streams: no request fails, every replica runs it.
    chatter = Chatter(client)
    chatter.start()
    try:
        out = llmctl.json(
            "deploy",
            "chat",
            "--model",
            str(tiny_llama),
            "--max-num-seqs",
            "8",
            *engine,
            "--timeout",
            str(REPLICA_START_S),
        )
        wait_until("requests served after the rollout", lambda: chatter.done >= 3, 60)
    finally:
        chatter.halt.set()
        chatter.join(60)
    assert chatter.failures == [] and chatter.done > 0
    assert out["revision"] == 2 and out["deployment"]["engine_config"]["max_num_seqs"] == 8
    deployment = llmctl.json("status", "chat")
    assert [r["revision"] for r in ready_replicas(deployment)] == [2, 2]
    wait_until(
        "old replicas gone",
        lambda: sorted(c["max_num_seqs"] for c in replica_configs(agent_procs)) == [8, 8],
        60,
    )
    diff = llmctl.json("revisions", "chat")["diff"]
    assert diff["from"] == 1 and diff["to"] == 2
    assert diff["changes"] == [{"key": "max_num_seqs", "from": 4, "to": 8}]

    # 3. Roll back: revision 1's config serves again.
    assert llmctl.json("rollback", "chat", "--wait", "--timeout", str(REPLICA_START_S))["revision"] == 1
    wait_until(
        "revision 1 processes only",
        lambda: sorted(c["max_num_seqs"] for c in replica_configs(agent_procs)) == [4, 4],
        60,
    )
    assert client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    ).choices
    kinds = [e["kind"] for e in llmctl.json("events", "--deployment", "chat")]
    assert "deployment.rolled_back" in kinds

    # 4. Node a dies with its replicas: within the node timeout its replica runs on b, requests succeed.
    agents["a"].send_signal(signal.SIGKILL)
    agents["a"].wait()

    def both_on_b() -> bool:
        ready = ready_replicas(llmctl.json("status", "chat"))
        return len(ready) == 2 and {r["node"] for r in ready} == {"b"}

    wait_until("both replicas on node b", both_on_b, NODE_TIMEOUT_S + REPLICA_START_S)
    assert nodes()["a"] == "unhealthy"
    for _ in range(3):
        assert client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        ).choices

    # 5. Restart the control plane on the same database: state comes back from SQL, b reconnects and
    # its replicas are adopted (same processes), the new gateway serves with the tenant's key.
    before = {r["id"] for r in ready_replicas(llmctl.json("status", "chat"))}
    serving_pids = {c.pid for c in psutil.Process(agents["b"].pid).children()}
    assert server.send_signal(signal.SIGTERM) is None and server.wait(30) == 0
    processes.llmctl("server", *server_args, home=tmp_path / "cp")
    wait_until("node b back", lambda: nodes().get("b") == "healthy", 60)
    revisions = llmctl.json("revisions", "chat")["revisions"]
    assert [(r["number"], r["current"]) for r in revisions] == [(1, True), (2, False)]
    assert [t["name"] for t in llmctl.json("tenants", "list")] == ["acme"]
    wait_until(
        "adopted replicas ready",
        lambda: {r["id"] for r in ready_replicas(llmctl.json("status", "chat"))} == before,
        60,
    )
    assert {c.pid for c in psutil.Process(agents["b"].pid).children()} == serving_pids
    answer = wait_until("the new gateway routes chat", lambda: _try_chat(client), 30)
    assert answer.choices[0].message.content


def _try_chat(client: Any) -> Any:
    try:
        return client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
    except Exception:
        return None
