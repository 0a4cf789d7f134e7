"""`llmctl up` / `llmctl down`: a whole llmctl on this machine in one command.

`up` runs a control plane (SQLite in $LLMCTL_HOME) and one agent as child processes, deploys one model,
creates a default tenant, waits until the deployment serves and prints how to call it. The state lives
in $LLMCTL_HOME/up.json (mode 0600: it holds the API key, shown once by the control plane, and the
admin token): the addresses, the key, and the pids of what runs. With --detach a supervisor process
(`python -m controlplane.up SPEC`) owns the children in the background; `down` signals it.

Children get their own process group (Ctrl-C reaches only the supervisor, which stops the agent first so
replicas drain, then the control plane) and PR_SET_PDEATHSIG, so a killed supervisor takes them along.
A child that dies on its own is started again with backoff while the others keep running (up_restart.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.controlplane.commands.up_state import (
    LOCAL_NODE,
    START_TIMES,
    alive,
    child_setup,
    clear_pids,
    follow_log,
    inherited_env,
    kill_tree,
    live_pids,
    log_tail,
    read_state,
    start_time,
    write_state,
)
from llmctl.controlplane.errors import ControlPlaneError, InvalidArgument, Unavailable
from llmctl.controlplane.tls import ClientTls
from llmctl.controlplane.up_restart import ChildRestarts

if TYPE_CHECKING:
    from llmctl.controlplane.pki import LocalPki

STARTUP_S = 90.0
"""Longest wait for the control plane to answer, and for the agent's node to join."""
STOP_AGENT_S = 30.0
STOP_SERVER_S = 20.0


class UpFailed(Unavailable):
    """Part of the local stack could not start or died; the message carries the tail of its log."""


class Stopped(BaseException):
    """SIGINT/SIGTERM arrived: unwind and stop the children (BaseException, so no handler swallows it)."""


@dataclass(frozen=True)
class UpSpec:
    """What one `llmctl up` runs; travels as JSON to the detached supervisor."""

    model: str
    """As the agent resolves it: a registered name (already pulled), an absolute folder/file, a hub id."""
    deployment: str
    home: str
    replicas: int = 1
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    grpc_port: int = 50051
    timeout_s: float = 900.0
    tls: bool = False
    """gRPC over mutual TLS (the agent and llmctl present certificates) and the gateway over HTTPS, all from a
    local CA in $LLMCTL_HOME/tls made on first use (`_local_pki`)."""
    run_id: str = ""
    """Written into up.json, so the process that started this run knows the state there is this run's."""
    response_cache_mb: float = 0.0
    """The gateway's exact response cache (`llmctl server --response-cache-mb`); 0: off."""

    @property
    def control_plane(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def gateway_url(self) -> str:
        host = "127.0.0.1" if self.gateway_host in ("0.0.0.0", "") else self.gateway_host
        return f"{'https' if self.tls else 'http'}://{host}:{self.gateway_port}"

    @property
    def logs(self) -> Path:
        return Path(self.home) / "logs"


class Stack:
    """The supervisor: starts the control plane and the agent, brings the deployment up, then watches."""

    def __init__(self, spec: UpSpec, log: Callable[[str], None]):
        self.spec, self.log = spec, log
        self.home = Path(spec.home)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.client_tls: ClientTls | None = None
        """With spec.tls: how this supervisor (and llmctl, through up.json) reaches the control plane."""
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        """Each child's arguments and extra environment, to start it again the same way."""
        self.restarts: dict[str, ChildRestarts] = {}

    def run(self, announce: Callable[[dict[str, Any]], None] = lambda _state: None) -> None:
        """Bring everything up, call announce(state), then block until a signal, restarting what dies."""
        previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
        state: dict[str, Any] = {}
        try:
            state = self.start()
            announce(state)
            self.watch(state)
        except Stopped:
            self.log("stopping")
        except ControlPlaneError as e:
            write_state(self.home, {**read_state(self.home), "state": "failed", "error": e.message})
            raise
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        self.log("stopped")

    def start(self) -> dict[str, Any]:
        from llmctl.controlplane.tokens import ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE, load_or_create_token

        spec = self.spec
        admin_token = load_or_create_token(self.home / ADMIN_TOKEN_FILE, "admin token")
        join_token = load_or_create_token(self.home / JOIN_TOKEN_FILE, "join token")
        kept = read_state(self.home)
        pki = _local_pki(spec) if spec.tls else None
        if pki is not None:
            self.client_tls = ClientTls(ca=pki.ca, cert=pki.admin.cert, key=pki.admin.key)
        state = {
            "state": "starting",
            "error": None,
            "run_id": spec.run_id,
            "control_plane": spec.control_plane,
            "gateway_url": spec.gateway_url,
            "admin_token": admin_token,
            "deployment": spec.deployment,
            "model": spec.model,
            "logs": str(spec.logs),
            "home": str(self.home),
            "api_key": kept.get("api_key"),
            "tenant": kept.get("tenant"),
            "pids": {"supervisor": os.getpid()},
            START_TIMES: {str(os.getpid()): start_time(os.getpid())},
            # What llmctl presents to this control plane (common.resolve_client_tls reads it).
            "tls": {"ca": str(pki.ca), "cert": str(pki.admin.cert), "key": str(pki.admin.key)} if pki else None,
        }
        write_state(self.home, state)
        self.log(f"starting the control plane (gRPC {spec.control_plane}, gateway {spec.gateway_url})")
        self._spawn(
            state,
            "server",
            [
                "server",
                "--grpc-host",
                "127.0.0.1",
                "--grpc-port",
                str(spec.grpc_port),
                "--gateway-host",
                spec.gateway_host,
                "--gateway-port",
                str(spec.gateway_port),
                *(["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--client-ca", str(pki.ca)]
                  if pki else []),
                *(["--response-cache-mb", str(spec.response_cache_mb)] if spec.response_cache_mb else []),
            ],
            {},
        )
        from llmctl.controlplane.client import AdminClient

        with AdminClient(spec.control_plane, admin_token, timeout_s=5.0, tls=self.client_tls) as client:
            self._until("the control plane answers", lambda: client.list_nodes() is not None, STARTUP_S)
            self.log(f"starting agent {LOCAL_NODE!r}")
            self._spawn(
                state,
                "agent",
                [
                    "agent",
                    "--control-plane",
                    spec.control_plane,
                    "--node-name",
                    LOCAL_NODE,
                    "--log-dir",
                    str(spec.logs / "replicas"),
                    *(["--ca", str(pki.ca), "--cert", str(pki.agent.cert), "--key", str(pki.agent.key)] if pki else []),
                    # No --max-replicas: the node takes one replica per core (per GPU), each pinned to its own
                    # cores, so that scaling out never means less service (agent/cpu_slots.py).
                ],
                {"LLMCTL_JOIN_TOKEN": join_token},
            )
            self._until(f"node {LOCAL_NODE!r} joins", lambda: _node_healthy(client, LOCAL_NODE), STARTUP_S)
            self.log(f"deploying {spec.model} as {spec.deployment}")
            after = client.last_event_id(deployment=spec.deployment)
            revision = client.deploy(spec.deployment, spec.model, {}, spec.replicas).revision
            state["tenant"], state["api_key"] = self._tenant_key(client, state)
            write_state(self.home, state)
            from llmctl.controlplane.commands.wait import wait_for_revision

            wait_for_revision(
                client,
                spec.deployment,
                revision,
                after_event_id=after,
                timeout_s=spec.timeout_s,
                progress=self.log,
            )
        state["state"] = "ready"
        write_state(self.home, state)
        return state

    def watch(self, state: dict[str, Any]) -> None:
        """Until a signal: start any child that dies again, with backoff (up_restart.py). The others keep
        running, so the replicas serve on while the control plane restarts."""
        while True:
            now = time.monotonic()
            for name, child in list(self.children.items()):
                restarts = self.restarts.setdefault(name, ChildRestarts())
                if restarts.restart_at is None and child.poll() is not None:
                    delay = restarts.died(child.returncode, now)
                    self.log(
                        f"the {name} (pid {child.pid}) exited ({restarts.last_exit}); restarting it in "
                        f"{delay:g} s: {log_tail(self.spec.logs / f'{name}.log')}"
                    )
                    self._record_restarts(state)
                elif restarts.restart_at is not None and now >= restarts.restart_at:
                    self._restart(state, name, restarts)
            time.sleep(0.2)

    def _restart(self, state: dict[str, Any], name: str, restarts: ChildRestarts) -> None:
        state[START_TIMES].pop(str(self.children[name].pid), None)
        with open(self.spec.logs / f"{name}.log", "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} llmctl up: restarting the {name} "
                      f"(it exited: {restarts.last_exit})\n")
        args, env = self.commands[name]
        self._spawn(state, name, args, env)
        restarts.restarted(time.monotonic())
        self.log(f"restarted the {name} (pid {self.children[name].pid}, restart {restarts.restarts})")
        self._record_restarts(state)

    def _record_restarts(self, state: dict[str, Any]) -> None:
        state["restarts"] = {name: r.as_state() for name, r in self.restarts.items()}
        waiting = any(r.restart_at is not None for r in self.restarts.values())
        state["state"] = "restarting" if waiting else "ready"
        write_state(self.home, state)

    def stop(self) -> None:
        """Agent first (it drains and stops its replicas), then the control plane; nothing survives."""
        for name, grace in (("agent", STOP_AGENT_S), ("server", STOP_SERVER_S)):
            child = self.children.get(name)
            if child is not None and child.poll() is None:
                self.log(f"stopping the {name}")
                kill_tree(child.pid, grace)
                child.wait()
        clear_pids(self.home)

    def _spawn(self, state: dict[str, Any], name: str, args: list[str], env: dict[str, str]) -> None:
        self.spec.logs.mkdir(parents=True, exist_ok=True)
        with open(self.spec.logs / f"{name}.log", "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "llmctl.controlplane.cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**inherited_env(), "LLMCTL_HOME": str(self.home), **env},
                preexec_fn=child_setup,
                close_fds=True,
            )
        self.children[name] = child
        self.commands[name] = (args, env)
        state["pids"][name] = child.pid
        state[START_TIMES][str(child.pid)] = start_time(child.pid)
        write_state(self.home, state)

    def _until(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for name, child in self.children.items():
                if child.poll() is not None:
                    raise UpFailed(
                        f"the {name} exited while waiting until {what} (code {child.returncode}): "
                        f"{log_tail(self.spec.logs / f'{name}.log')}"
                    )
            try:
                if ready():
                    return
            except Unavailable:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise UpFailed(
                    f"gave up after {timeout_s:g} s waiting until {what}; logs in {self.spec.logs}"
                )
            time.sleep(0.3)

    def _tenant_key(self, client: Any, state: dict[str, Any]) -> tuple[str, str]:
        """The default tenant's key: the one kept in up.json while the gateway still accepts it, else a
        new tenant's (a key is shown only once, so a lost one cannot be read back)."""
        if state.get("api_key") and state.get("tenant") and self._key_works(state["api_key"]):
            return state["tenant"], state["api_key"]
        from llmctl.controlplane.errors import AlreadyExists

        taken = {t.name for t in client.list_tenants()}
        for n in range(1, 1000):
            name = "default" if n == 1 else f"default-{n}"
            if name in taken:
                continue
            try:
                tenant, key = client.create_tenant(name)
            except AlreadyExists:
                continue
            self.log(f"created tenant {tenant.name!r}; its API key is kept in {self.home / 'up.json'}")
            return tenant.name, key
        raise UpFailed("could not create a default tenant: default .. default-999 all exist")

    def _key_works(self, key: str) -> bool:
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(
                    f"{self.spec.gateway_url}/v1/models",
                    timeout=5,
                    trust_env=False,
                    verify=self.client_tls.ssl_context() if self.client_tls is not None else True,
                    headers={"authorization": f"Bearer {key}"},
                )
                return answer.status_code == 200
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise UpFailed(f"the gateway at {self.spec.gateway_url} does not answer") from None
                time.sleep(0.3)


def check_can_start(spec: UpSpec) -> None:
    """Refuse (InvalidArgument, exit 2) when an llmctl up already runs here or a port is taken."""
    running = live_pids(read_state(Path(spec.home)))
    if running:
        pids = ", ".join(f"{name} {pid}" for name, pid in running.items())
        raise InvalidArgument(f"llmctl is already up in {spec.home} ({pids}); run `llmctl down` first")
    import socket

    for host, port, flag in (
        (spec.gateway_host, spec.gateway_port, "--gateway-port"),
        ("127.0.0.1", spec.grpc_port, "--grpc-port"),
    ):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                raise InvalidArgument(
                    f"cannot listen on {host}:{port} ({e.strerror}); pick another {flag}"
                ) from None


def spawn_detached(spec: UpSpec, log: Callable[[str], None]) -> dict[str, Any]:
    """Start the supervisor in its own session and follow its log until it is ready; returns up.json."""
    spec.logs.mkdir(parents=True, exist_ok=True)
    log_path = spec.logs / "up.log"
    with open(log_path, "ab") as out:
        offset = out.tell()
        child = subprocess.Popen(
            [sys.executable, "-m", "llmctl.controlplane.up", json.dumps(asdict(spec))],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "LLMCTL_HOME": spec.home},
        )
    deadline = time.monotonic() + spec.timeout_s + 2 * STARTUP_S
    try:
        while True:
            offset = follow_log(log_path, offset, log)
            state = read_state(Path(spec.home))
            ours = state.get("run_id") == spec.run_id
            if ours and state.get("state") == "ready":
                return state
            if child.poll() is not None:
                follow_log(log_path, offset, log)
                error = state.get("error") if ours else None
                raise UpFailed(error or f"the supervisor exited (code {child.returncode}); see {log_path}")
            if time.monotonic() > deadline:
                raise UpFailed(f"not ready after {deadline:g} s; see {log_path}")
            time.sleep(0.3)
    except (KeyboardInterrupt, UpFailed):
        if child.poll() is None:
            kill_tree(child.pid, STOP_AGENT_S + STOP_SERVER_S)
        raise


def down(home: Path, log: Callable[[str], None]) -> list[str]:
    """Stop what `llmctl up` started here (supervisor first: it stops its children in order); returns
    what was stopped. Anything still alive after the grace periods is killed."""
    state = read_state(home)
    running = live_pids(state)
    stopped = []
    for name in ("supervisor", "agent", "server"):
        pid = running.get(name)
        if pid is not None and alive(pid):
            log(f"stopping the {name} (pid {pid})")
            kill_tree(pid, STOP_AGENT_S + STOP_SERVER_S if name == "supervisor" else STOP_AGENT_S)
            stopped.append(name)
    clear_pids(home)
    return stopped


def _local_pki(spec: UpSpec) -> LocalPki:
    """$LLMCTL_HOME/tls: the CA, and certificates for the server (loopback and the gateway's address), the local
    agent and the operator; made the first time, re-issued when missing or near expiry."""
    import socket

    from llmctl.controlplane.pki import local_pki

    wildcard = spec.gateway_host in ("0.0.0.0", "::", "")
    hosts = [socket.gethostname(), socket.getfqdn()] if wildcard else [spec.gateway_host]
    return local_pki(Path(spec.home) / "tls", server_hosts=hosts, agent=LOCAL_NODE, admin="admin")


def _node_healthy(client: Any, name: str) -> bool:
    return any(node.name == name and node.state == "healthy" for node in client.list_nodes())


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def _supervise(raw_spec: str) -> int:
    """The detached supervisor's entry point: run the stack until `llmctl down` signals it."""
    spec = UpSpec(**json.loads(raw_spec))

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    try:
        Stack(spec, log).run()
    except ControlPlaneError as e:
        log(f"error: {e.message}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_supervise(sys.argv[1]))
