"""Autoscaling end to end with real processes: a control plane (gRPC, gateway, SQLite), a CPU agent that runs
`llmctl serve` children of a tiny Llama, and a load generator through the gateway. The queue it raises scales
the deployment to a second replica, which takes traffic; when the load stops the deployment returns to one
replica after the down window. No request fails on the way up or down."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from llmctl.agent.cpu_slots import usable_cpus
from llmctl.agent.daemon import AgentConfig, AgentDaemon
from llmctl.controlplane.server import ControlPlane, ServerConfig
from tests.controlplane.test_cli_autoscale import ADMIN_TOKEN, llmctl

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(len(usable_cpus()) < 2, reason="two replicas need two cores of their own")]
# One sequence at a time, so that concurrent requests queue for admission (the signal); no scorer replica.
ENGINE = ["--num-kv-blocks", "64", "--max-model-len", "256", "--max-num-seqs", "1", "--quality-sample-rate", "0"]
UP_WINDOW_S, DOWN_WINDOW_S = 2, 8


class Load:
    """`workers` clients sending chat completions back to back through the gateway until stopped."""

    def __init__(self, url: str, key: str, workers: int = 8) -> None:
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, key), daemon=True) for _ in range(workers)]

    def _run(self, url: str, key: str) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                r = client.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                json={"model": "chat", "messages": [{"role": "user", "content": "Count to ten."}],
                                      "max_tokens": 48, "ignore_eos": True})
                self.codes.append(r.status_code)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@contextmanager
def cluster(tmp_path: Path, **config) -> Iterator[tuple[ControlPlane, AgentDaemon]]:
    """A control plane (SQLite, gRPC and gateway on free ports) and one CPU agent on this box."""
    plane = ControlPlane(ServerConfig(database_url=f"sqlite:///{tmp_path / 'llmctl.db'}", grpc_port=0,
                                      gateway_port=0, admin_token=ADMIN_TOKEN, home=tmp_path / "cp",
                                      reconcile_interval_s=0.2, heartbeat_interval_s=0.5, **config))
    plane.start()
    agent = AgentDaemon(AgentConfig(plane.grpc_address, plane.join_token, node_name="cpu-box",
                                    log_dir=tmp_path / "logs", telemetry_interval_s=0.5, max_backoff_s=1.0))
    agent.start()
    try:
        yield plane, agent
    finally:
        agent.stop()
        plane.stop(grace_s=1)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)
    return result


def test_queue_depth_scales_up_to_a_second_replica_and_back_without_a_failed_request(
        tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    with cluster(tmp_path) as (plane, agent):
        code, out = llmctl(plane, "deploy", "chat", "--model", str(tiny_llama), *ENGINE)
        assert code == 0, out
        code, out = llmctl(plane, "tenants", "create", "acme", "--output", "json")
        key = json.loads(out)["api_key"]
        code, out = llmctl(plane, "autoscale", "chat", "--min", "1", "--max", "2", "--target-queue", "1",
                           "--target-kv-usage", "off", "--scale-up-window", f"{UP_WINDOW_S}s",
                           "--scale-down-window", f"{DOWN_WINDOW_S}s")
        assert code == 0, out

        def serving() -> list:
            return [s for s in agent.statuses() if s.state.value == "READY"]

        [first] = serving()
        # 8 clients on replicas that run one sequence each: the queue stays above one per replica until the end.
        with Load(plane.gateway_url, key) as load:
            started = time.monotonic()
            second = wait_for(lambda: [s for s in serving() if s.replica_id != first.replica_id], 90,
                              "a second READY replica")[0]
            scaled_up_s = time.monotonic() - started
            wait_for(lambda: (t := plane.fleet.replica_telemetry(second.replica_id)) is not None
                     and t.stats.requests_total > 0, 30, "the second replica to answer requests")
        stopped = time.monotonic()
        assert UP_WINDOW_S <= scaled_up_s, "scaled up before the rise lasted the up window"
        wait_for(lambda: len(agent.statuses()) == 1, DOWN_WINDOW_S + 60, "the return to one replica")
        scaled_down_s = time.monotonic() - stopped
        assert scaled_down_s >= DOWN_WINDOW_S - 1, "scaled down before the quiet lasted the down window"

        assert load.codes and set(load.codes) == {200}, f"failed requests: {sorted(set(load.codes))}"
        code, history = llmctl(plane, "autoscale", "history", "chat")
        assert "on 2 1 yes" in history and "on 1 2 yes" in history  # down, then up (newest first)


def test_scale_to_zero_then_the_requests_that_wait_are_served_by_a_fresh_replica(
        tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    with cluster(tmp_path, cold_start_max_held=3, cold_start_hold_s=120) as (plane, agent):
        code, out = llmctl(plane, "deploy", "chat", "--model", str(tiny_llama), *ENGINE)
        assert code == 0, out
        key = json.loads(llmctl(plane, "tenants", "create", "acme", "--output", "json")[1])["api_key"]
        code, out = llmctl(plane, "autoscale", "chat", "--min", "0", "--max", "1", "--target-kv-usage", "off",
                           "--scale-up-window", "0s", "--scale-down-window", "3s")
        assert code == 0, out
        wait_for(lambda: not agent.statuses(), 60, "the deployment to scale to zero after a quiet window")

        def ask() -> httpx.Response:
            return httpx.post(f"{plane.gateway_url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
                              timeout=120)

        answers: list[httpx.Response] = []
        waiting = [threading.Thread(target=lambda: answers.append(ask())) for _ in range(3)]
        for t in waiting:
            t.start()
        # A replica takes seconds to start (spawn, import torch, load, warm up): the three wait meanwhile.
        wait_for(lambda: plane.hold.held("chat") == 3, 30, "three requests held at the gateway")
        refused = ask()  # the bound: a fourth is refused at once, with when to come back
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "3 requests already wait" in refused.json()["error"]["message"]
        for t in waiting:
            t.join(timeout=120)
        assert [a.status_code for a in answers] == [200, 200, 200]
        code, history = llmctl(plane, "autoscale", "history", "chat")
        assert "on 0 1 yes" in history and "from zero" in history
