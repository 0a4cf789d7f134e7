"""A fleet of real processes to inject faults into, and clients that record what each request got.

    Fleet(root, model, engine=...).start()
        a private PostgreSQL (tests/e2e/private_postgres.py), `llmctl server` on it, and two `llmctl agent`
        processes, a and b, with one replica of the deployment "chat" each. Agent a reaches the control plane
        through a TcpProxy (tests/e2e/tcp_proxy.py), so its network can be cut.
    Load(urls, ...).start() / .stop()
        threads streaming chat completions in a loop, through the gateway or straight to replicas; every
        request's Outcome is kept.

Used by tests/e2e/test_faults.py and benchmarks/faults.py (through tests/e2e/faults.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.errors import ControlPlaneError
from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.e2e.private_postgres import PrivatePostgres
from tests.e2e.tcp_proxy import TcpProxy

ADMIN_TOKEN = "faults-admin-token"
JOIN_TOKEN = "faults-join-token"
DEPLOYMENT = "chat"
NODES = ("a", "b")
PROXIED = "a"
"""The agent whose connection to the control plane runs through the TcpProxy."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ControlPlaneError as e:  # the control plane is restarting, or its database is
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"not within {timeout_s:g} s: {what} (last seen: {last!r})")


class Fleet:
    def __init__(self, root: Path, model: str, *, engine: dict[str, Any], node_timeout_s: float = 6.0) -> None:
        self.root, self.model, self.engine, self.node_timeout_s = root, model, engine, node_timeout_s
        self.grpc_port, self.gateway_port = free_port(), free_port()
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        self.postgres = PrivatePostgres(free_port())
        self.proxy = TcpProxy(("127.0.0.1", self.grpc_port))
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.admin = AdminClient(f"127.0.0.1:{self.grpc_port}", ADMIN_TOKEN, timeout_s=5, own_connection=True)
        self.api_key = ""

    # -- processes ------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 240) -> Fleet:
        self.postgres.start()
        self.proxy.start()
        self.start_server()
        for name in NODES:
            self.start_agent(name)
        wait_until("both agents joined", lambda: self.node_states() == {n: "healthy" for n in NODES}, 60)
        self.admin.deploy(DEPLOYMENT, self.model, self.engine, replicas=2, quality_sample_rate=0)
        self.api_key = self.admin.create_tenant("clients")[1]
        self.settled(timeout_s)
        return self

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        home = self.root / f"home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "llmctl.controlplane.cli", *args], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "LLMCTL_HOME": str(home)})

    def start_server(self) -> None:
        self.server = self._spawn(
            "server", "server", "--database-url", self.postgres.url, "--grpc-port", str(self.grpc_port),
            "--gateway-port", str(self.gateway_port), "--admin-token", ADMIN_TOKEN, "--join-token", JOIN_TOKEN,
            "--node-timeout", str(self.node_timeout_s))
        wait_until("the gateway", self._gateway_up, 60)

    def _gateway_up(self) -> bool:
        assert self.server is not None and self.server.poll() is None, self.log("server")[-3000:]
        try:
            return httpx.get(self.gateway + "/health", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()

    def start_agent(self, name: str) -> None:
        address = self.proxy.address if name == PROXIED else f"127.0.0.1:{self.grpc_port}"
        self.agents[name] = self._spawn(
            f"agent-{name}", "agent", "--control-plane", address, "--join-token", JOIN_TOKEN, "--node-name", name,
            "--max-replicas", "2", "--log-dir", str(self.root / f"replicas-{name}"))

    def kill_agent(self, name: str) -> None:
        self.agents[name].send_signal(signal.SIGKILL)
        self.agents[name].wait()

    def connections(self, name: str) -> int:
        """How many times agent `name` has connected to the control plane (from its log)."""
        return self.log(f"agent-{name}").count(f"agent {name} connected to the control plane")

    def replica_pids(self, name: str) -> set[int]:
        try:
            children = psutil.Process(self.agents[name].pid).children()
        except psutil.Error:
            return set()
        return {c.pid for c in children if _is_replica(c)}

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for process in [*self.agents.values(), self.server]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.agents.values(), self.server]:
            if process is not None:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        left = _processes_under(self.root)
        for process in left:
            process.kill()
        psutil.wait_procs(left, timeout=10)
        self.admin.close()
        self.proxy.close()
        self.postgres.close()
        assert not left, f"processes outlived the fleet: {[p.pid for p in left]}"

    # -- what the control plane says ------------------------------------------------------------------
    def node_states(self) -> dict[str, str]:
        return {n.name: n.state for n in self.admin.list_nodes()}

    def ready(self) -> dict[int, tuple[str, str]]:
        """READY serving replicas: id -> (node, url)."""
        shown = self.admin.get_deployment(DEPLOYMENT)
        return {r.id: (r.node, r.url) for r in shown.replicas if r.state == pb.REPLICA_STATE_READY and r.role in ("", "serve")}

    def settled(self, timeout_s: float = 180) -> dict[int, tuple[str, str]]:
        """Wait for both nodes healthy and connected and one READY replica on each; returns the replicas."""
        seen: list[Any] = []

        def check() -> dict[int, tuple[str, str]] | None:
            seen[:] = [self.ready(), self.node_states()]
            ready, healthy = seen[0], seen[1] == {n: "healthy" for n in NODES}
            return ready if healthy and sorted(node for node, _ in ready.values()) == list(NODES) else None

        try:
            return wait_until("one READY replica on each healthy node", check, timeout_s, 0.25)
        except AssertionError as e:
            events = [f"{e.kind}: {e.message}" for e in self.admin.list_events(limit=15, newest=True)]
            raise AssertionError(f"{e}; replicas and nodes {seen}; last events {events}") from None

    def upstream_failures(self) -> int:
        """The gateway's count of attempts a replica failed before answering (each moved to another)."""
        text = httpx.get(self.gateway + "/metrics", timeout=5, trust_env=False).text
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("llmctl_gateway_upstream_failures_total{")))


def _is_replica(process: psutil.Process) -> bool:
    try:
        args = process.cmdline()
    except psutil.Error:
        return False
    return "serve" in args and process.status() != psutil.STATUS_ZOMBIE


def _processes_under(root: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE \
                    and process.environ().get("LLMCTL_HOME", "").startswith(str(root)):
                found.append(process)
        except psutil.Error:
            continue
    return found


# ---- clients ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request as its client saw it."""

    started: float  # time.monotonic()
    ended: float
    status: int | None  # HTTP status; None when no answer came (refused, reset, or timed out first)
    result: str
    """ok: [DONE] and no error; error_event: an error event, then [DONE] (a mid-stream failure, reported);
    http: a non-200 answer; refused: no answer (connection refused or reset before one); cut: the stream
    broke without an error event; hang: no byte for the read timeout."""
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == 200


class Load:
    """`concurrency` threads, each streaming chat completions back to back (round-robin over `urls`)."""

    def __init__(self, urls: list[str], api_key: str | None, *, concurrency: int, max_tokens: int,
                 read_timeout_s: float = 20.0) -> None:
        self.urls, self.api_key, self.concurrency = urls, api_key, concurrency
        self.max_tokens, self.read_timeout_s = max_tokens, read_timeout_s
        self.outcomes: list[Outcome] = []
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._count = 0
        self._lock = threading.Lock()

    def start(self) -> Load:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Outcome]:
        self._halt.set()
        for thread in self._threads:
            thread.join(self.read_timeout_s + 10)
        return list(self.outcomes)

    def _run(self, worker: int) -> None:
        with httpx.Client(trust_env=False, timeout=httpx.Timeout(self.read_timeout_s, connect=5)) as client:
            while not self._halt.is_set():
                with self._lock:
                    n = self._count
                    self._count += 1
                outcome = self._one(client, self.urls[n % len(self.urls)], n)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status is None:
                    time.sleep(0.05)  # nothing listens (a restart): do not spin

    def _one(self, client: httpx.Client, url: str, n: int) -> Outcome:
        # A number first: every prompt differs (no cached answers) and prefix affinity spreads them.
        body = {"model": DEPLOYMENT, "max_tokens": self.max_tokens, "stream": True, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"{n}: paged attention and continuous batching"}]}
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        started, status, result, detail = time.monotonic(), None, "refused", ""
        try:
            with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as answer:
                status = answer.status_code
                if status != 200:
                    result, detail = "http", answer.read()[:300].decode(errors="replace")
                else:
                    result, error = "cut", False
                    for line in answer.iter_lines():
                        data = line.removeprefix("data: ") if line.startswith("data: ") else None
                        if data == "[DONE]":
                            result = "error_event" if error else "ok"
                            break
                        if data and data.startswith('{"error"'):
                            error, detail = True, json.loads(data)["error"]["message"][:300]
        except httpx.TimeoutException as e:
            result, detail = "hang", repr(e)
        except httpx.HTTPError as e:
            if status == 200:
                result = "error_event" if detail else "cut"
            detail = detail or repr(e)
        return Outcome(started, time.monotonic(), status, result, detail)
