"""The replica supervisor: runs each engine replica as a child `llmctl serve` process and watches it.

One monitor thread per replica owns that replica's process and every state change:

    STARTING --/health 200 + one warm-up completion--> READY --process dies--> FAILED --backoff--> STARTING
        \\--exit or startup timeout--> FAILED --backoff--> STARTING ...
    stop(): [DRAINING: SIGTERM, grace period, SIGKILL] -> STOPPED (never restarted)

The control plane decides when a failing replica should give up (by stopping it); here it is retried with
exponential backoff. Children die with the agent: own process group, killed in close(), and
PR_SET_PDEATHSIG on Linux so even a SIGKILLed agent takes them along.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from llmctl.agent.cpu_slots import partition, pin_process
from llmctl.agent.engine.config import PINNED_ENV

logger = logging.getLogger("llmctl.agent.replicas")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LOG_TAIL_LINES = 20
POLL_S = 0.2
"""How often a monitor checks its process and /health; also bounds how late a stop() is noticed."""


class ReplicaState(StrEnum):
    """Names match the proto's ReplicaState values without the REPLICA_STATE_ prefix."""

    PENDING = "PENDING"
    STARTING = "STARTING"
    READY = "READY"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ReplicaStatus:
    """What the agent reports about one replica (the ReplicaStatus proto, plus the local pid)."""

    replica_id: int
    deployment: str
    revision: int
    state: ReplicaState
    url: str = ""
    error: str = ""
    restarts: int = 0
    pid: int | None = None


class ReplicaError(Exception):
    """A start/stop request the supervisor cannot carry out as asked."""


class UnknownReplica(ReplicaError, LookupError):
    def __init__(self, replica_id: int) -> None:
        super().__init__(f"no replica {replica_id} runs on this agent")
        self.replica_id = replica_id


@dataclass(frozen=True)
class ReplicaSpec:
    deployment: str
    revision: int
    model: str
    engine_config: dict[str, Any]
    served_model_name: str


@dataclass(frozen=True)
class _StopRequest:
    drain: bool
    deadline: float
    """time.monotonic() after which the process is killed."""

    def merge(self, drain: bool, grace_s: float) -> _StopRequest:
        """A second stop may only hurry the first (no drain, or an earlier deadline)."""
        return _StopRequest(self.drain and drain, min(self.deadline, time.monotonic() + grace_s))


class _Replica:
    """Mutable state of one replica; written only by its monitor thread (except `stop_request`)."""

    def __init__(self, replica_id: int, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.status = ReplicaStatus(replica_id, spec.deployment, spec.revision, ReplicaState.PENDING)
        self.process: subprocess.Popen[bytes] | None = None
        self.stop_request: _StopRequest | None = None
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.cpus: list[int] | None = None
        """The cores this replica's process is pinned to (None: not pinned)."""
        self.gpu: str | None = None
        """The GPU its process sees (CUDA_VISIBLE_DEVICES), kept across restarts; None: not bound."""


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl  # libc's, via the already-loaded process image


def _pdeath_preexec(cpus: list[int] | None = None) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the thread that forked it dies, and pinning it
    to `cpus` (so that no thread of it ever runs elsewhere)."""
    prctl = _prctl()  # resolved before fork: the child must not load libraries or take locks before exec
    if prctl is None and cpus is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the agent died before prctl took effect
                os._exit(1)

    return preexec


def free_port(host: str) -> int:
    # The child binds it a moment later; if someone else takes it first, the child fails to start
    # and the retry picks another port.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ReplicaSupervisor:
    """Starts, watches, restarts and stops replicas; on_change(status) runs on every state change."""

    def __init__(
        self,
        on_change: Callable[[ReplicaStatus], None],
        *,
        command: list[str] | None = None,
        host: str = "127.0.0.1",
        # Loading (and --quantization awq calibrating at load) can take minutes on big models; the control
        # plane's --rollout-timeout decides rollouts, this only catches a replica that hangs for good.
        startup_timeout_s: float = 600,
        max_backoff_s: float = 30,
        env: dict[str, str] | None = None,
        log_dir: str | Path | None = None,
        advertise_host: str | None = None,
        cpus: list[int] | None = None,
        gpus: list[str] | None = None,
    ) -> None:
        """command: how to run the llmctl CLI (default: this Python, -m controlplane.cli);
        host: the address replicas bind; advertise_host: the one put in their reported url, for a
        gateway on another machine (default: host);
        env: variables added to the agent's environment for every child;
        cpus: the cores to split among the replicas, each pinned to a disjoint set that follows the replica
        count (agent/cpu_slots.py); None: no pinning (GPU replicas);
        gpus: the GPUs (NVML uuids or indices) to bind replicas to, one each while there are enough (the least
        shared one after that), through CUDA_VISIBLE_DEVICES; None: not bound."""
        if startup_timeout_s <= 0 or max_backoff_s < 1:
            raise ValueError("startup_timeout_s must be > 0 and max_backoff_s >= 1")
        self._on_change = on_change
        self._command = list(command) if command else [sys.executable, "-m", "llmctl.controlplane.cli"]
        self._host = host
        # A wildcard bind address is not one to connect to: probe over loopback, advertise host's name.
        wildcard = host in ("0.0.0.0", "::", "")
        self._probe_host = "127.0.0.1" if wildcard else host
        self._advertise_host = advertise_host or (socket.gethostname() if wildcard else host)
        self._startup_timeout_s = startup_timeout_s
        self._max_backoff_s = max_backoff_s
        self._env = {**os.environ, **(env or {})}
        self._cpus = list(cpus) if cpus is not None else None
        self._gpus = list(gpus) if gpus else None
        if self._cpus is not None:
            if not self._cpus:
                raise ValueError("cpus must name at least one core")
            self._env[PINNED_ENV] = "1"
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="llmctl-replicas-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._replicas: dict[int, _Replica] = {}
        self._lock = threading.Lock()  # guards _replicas and every replica's status
        self._notify_lock = threading.Lock()  # serialises on_change calls so callers need no locking
        self._closed = False

    # -- public API ----------------------------------------------------------------------------------
    def start(self, replica_id: int, *, deployment: str, revision: int, model: str,
              engine_config: dict[str, Any], served_model_name: str) -> None:
        """Start a replica in the background; STARTING, then READY or FAILED, arrive through on_change.

        Starting a replica id that already runs the same spec does nothing (a control plane may resend
        commands after a reconnect); a different spec under a live id is an error."""
        spec = ReplicaSpec(deployment, revision, model, dict(engine_config), served_model_name)
        json.dumps(spec.engine_config)  # fail here, not in the monitor thread, if it cannot be sent
        with self._lock:
            if self._closed:
                raise ReplicaError("the replica supervisor is closed")
            existing = self._replicas.get(replica_id)
            if existing is not None:
                if existing.spec == spec:
                    return
                raise ReplicaError(
                    f"replica {replica_id} already runs {existing.spec.deployment} revision "
                    f"{existing.spec.revision}; stop it before reusing its id"
                )
            replica = _Replica(replica_id, spec)
            self._replicas[replica_id] = replica
            replica.thread = threading.Thread(
                target=self._monitor, args=(replica,), name=f"replica-{replica_id}", daemon=True
            )
            self._rebalance()  # the others give up their share of the cores before this one starts
            if self._gpus is not None:
                taken = collections.Counter(r.gpu for r in self._replicas.values() if r is not replica)
                replica.gpu = min(self._gpus, key=lambda g: (taken[g], self._gpus.index(g)))
        replica.thread.start()

    def stop(self, replica_id: int, *, drain: bool = True, grace_s: float = 30, wait: bool = False) -> None:
        """Stop a replica: with drain, SIGTERM (requests in flight finish), SIGKILL after grace_s;
        without, SIGKILL now. Returns at once unless wait; STOPPED arrives through on_change."""
        with self._lock:
            replica = self._replicas.get(replica_id)
            if replica is None:
                raise UnknownReplica(replica_id)
            self._request_stop(replica, drain, grace_s)
            thread = replica.thread
        if wait and thread is not None:
            thread.join()

    def statuses(self) -> list[ReplicaStatus]:
        """Every replica not yet stopped, for re-registration after a reconnect."""
        with self._lock:
            return [r.status for r in self._replicas.values()]

    def status(self, replica_id: int) -> ReplicaStatus:
        with self._lock:
            replica = self._replicas.get(replica_id)
            if replica is None:
                raise UnknownReplica(replica_id)
            return replica.status

    def close(self, *, grace_s: float = 5.0) -> None:
        """Stop every replica (SIGTERM, SIGKILL after grace_s) and wait until their processes are gone."""
        with self._lock:
            self._closed = True
            replicas = list(self._replicas.values())
            for replica in replicas:
                self._request_stop(replica, True, grace_s)
        for replica in replicas:
            if replica.thread is not None:
                replica.thread.join()

    @staticmethod
    def _request_stop(replica: _Replica, drain: bool, grace_s: float) -> None:
        grace_s = max(grace_s, 0.0)
        if replica.stop_request is None:
            replica.stop_request = _StopRequest(drain, time.monotonic() + grace_s)
        else:
            replica.stop_request = replica.stop_request.merge(drain, grace_s)
        replica.wake.set()

    def __enter__(self) -> ReplicaSupervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state changes -------------------------------------------------------------------------------
    def gpu_of(self, replica_id: int) -> str | None:
        """The GPU replica_id is bound to (None: not bound)."""
        with self._lock:
            replica = self._replicas.get(replica_id)
            if replica is None:
                raise UnknownReplica(replica_id)
            return replica.gpu

    def cpus_of(self, replica_id: int) -> list[int] | None:
        """The cores replica_id is pinned to (None: not pinned)."""
        with self._lock:
            replica = self._replicas.get(replica_id)
            if replica is None:
                raise UnknownReplica(replica_id)
            return replica.cpus

    def _rebalance(self) -> None:
        """Split the cores among the replicas not yet stopped (in id order, so sets move little) and pin the
        running ones to their new sets; their engines adopt the new thread count at their next step. Called
        with _lock held."""
        if self._cpus is None:
            return
        live = sorted(self._replicas.values(), key=lambda r: r.status.replica_id)
        for replica, cpus in zip(live, partition(self._cpus, len(live)), strict=True):
            if cpus == replica.cpus:
                continue
            replica.cpus = cpus
            if replica.process is not None and replica.process.poll() is None:
                pin_process(replica.process.pid, cpus)

    def _set(self, replica: _Replica, notify: bool = True, **changes: Any) -> None:
        with self._lock:
            replica.status = replace(replica.status, **changes)
            status = replica.status
            if status.state is ReplicaState.STOPPED:
                self._replicas.pop(status.replica_id, None)
                self._rebalance()  # the cores it held go to the others
        if notify:
            self._notify(status)

    def _notify(self, status: ReplicaStatus) -> None:
        with self._notify_lock:
            try:
                self._on_change(status)
            except Exception:  # a broken callback must not kill the monitor (and orphan the child)
                logger.exception("on_change failed for replica %d", status.replica_id)

    # -- the monitor thread --------------------------------------------------------------------------
    def _monitor(self, replica: _Replica) -> None:
        # Spawning from this thread matters: PR_SET_PDEATHSIG fires when the forking *thread* exits,
        # and this thread lives exactly as long as the replica's processes.
        failures = 0
        try:
            with httpx.Client(timeout=5.0) as client:
                while replica.stop_request is None:
                    ready_at = self._run_once(replica, client)
                    if replica.stop_request is not None:
                        break
                    if ready_at is not None and time.monotonic() - ready_at >= self._max_backoff_s:
                        failures = 0  # it served for a while: restart as quickly as after a first failure
                    failures += 1
                    replica.wake.wait(min(2.0 ** (failures - 1), self._max_backoff_s))
                    if replica.stop_request is None:
                        self._set(replica, restarts=replica.status.restarts + 1, notify=False)
        except Exception as exc:  # a supervisor bug must still end in a dead child and a final status
            logger.exception("replica %d: monitor failed", replica.status.replica_id)
            with self._lock:
                self._request_stop(replica, False, 0.0)
            self._set(replica, notify=False, error=f"agent error while supervising the replica: {exc!r}")
        self._terminate(replica)

    def _run_once(self, replica: _Replica, client: httpx.Client) -> float | None:
        """Spawn, wait for READY, then for the process to end. Returns when it became READY (monotonic)
        or None if it never did; leaves the replica FAILED unless a stop was requested."""
        port = free_port(self._host)
        url = _http_url(self._probe_host, port)
        log_path = self.log_dir / f"replica-{replica.status.replica_id}.log"
        try:
            proc, log_offset = self._spawn(replica, port, log_path)
        except OSError as exc:
            self._set(replica, state=ReplicaState.FAILED, url="", pid=None,
                      error=f"cannot start the replica process: {exc}")
            return None
        self._set(replica, state=ReplicaState.STARTING, url="", pid=proc.pid)
        error = self._wait_ready(replica, proc, url, client)
        if replica.stop_request is not None:
            return None
        if error is not None:
            self._reap(replica)
            self._set(replica, state=ReplicaState.FAILED, pid=None, error=self._explain(error, log_path, log_offset))
            return None
        ready_at = time.monotonic()
        self._set(replica, state=ReplicaState.READY, url=_http_url(self._advertise_host, port), error="")
        while proc.poll() is None and replica.stop_request is None:
            replica.wake.wait(POLL_S)
        if replica.stop_request is not None:
            return ready_at
        self._reap(replica)  # the leader is gone; anything it forked goes too
        error = f"the replica process exited with code {proc.returncode} while serving"
        self._set(replica, state=ReplicaState.FAILED, url="", pid=None,
                  error=self._explain(error, log_path, log_offset))
        return ready_at

    def _spawn(self, replica: _Replica, port: int, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
        spec = replica.spec
        cmd = [
            *self._command, "serve", spec.model, "--host", self._host, "--port", str(port),
            "--served-model-name", spec.served_model_name, "--engine-config", json.dumps(spec.engine_config),
        ]
        with open(log_path, "ab") as log:
            offset = log.tell()
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            with self._lock:
                cpus = replica.cpus
            env = self._env if replica.gpu is None else {**self._env, "CUDA_VISIBLE_DEVICES": replica.gpu}
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # own process group: signals reach the whole replica, not the agent
                preexec_fn=_pdeath_preexec(cpus),
            )
        with self._lock:
            replica.process = proc
            if replica.cpus != cpus:  # the sets moved while it was being forked
                pin_process(proc.pid, replica.cpus)
        logger.info("replica %d: started pid %d on port %d (log %s)", replica.status.replica_id, proc.pid,
                    port, log_path)
        return proc, offset

    def _wait_ready(self, replica: _Replica, proc: subprocess.Popen[bytes], url: str,
                    client: httpx.Client) -> str | None:
        """None once /health answers 200 and one warm-up completion succeeded, else why not."""
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            if replica.stop_request is not None:
                return None
            if proc.poll() is not None:
                return f"the replica process exited with code {proc.returncode} during startup"
            if time.monotonic() >= deadline:
                return f"the replica was not healthy within {self._startup_timeout_s:g}s"
            try:
                if client.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            replica.wake.wait(POLL_S)
        # The first request pays one-off costs (kernel selection, allocator warm-up); pay them before
        # the gateway sends real traffic, and catch an engine that loads but cannot generate.
        body = {"model": replica.spec.served_model_name, "prompt": "Hello", "max_tokens": 1}
        try:
            r = client.post(f"{url}/v1/completions", json=body,
                            timeout=max(deadline - time.monotonic(), 1.0))
        except httpx.HTTPError as exc:
            return f"the warm-up completion failed: {type(exc).__name__}: {exc}"
        if r.status_code != 200:
            return f"the warm-up completion returned HTTP {r.status_code}: {r.text[:500]}"
        return None

    def _terminate(self, replica: _Replica) -> None:
        """Carry out the stop request: DRAINING, SIGTERM, grace period, SIGKILL; then STOPPED."""
        replica.wake.clear()  # from here on it only signals that a later stop() hurried this one
        proc = replica.process
        request = replica.stop_request
        assert request is not None
        if proc is not None and proc.poll() is None and request.drain:
            self._set(replica, state=ReplicaState.DRAINING)
            _signal_group(proc, signal.SIGTERM)
            while proc.poll() is None:
                request = replica.stop_request
                assert request is not None
                left = request.deadline - time.monotonic()
                if not request.drain or left <= 0:
                    logger.warning("replica %d did not drain in time; killing it", replica.status.replica_id)
                    break
                replica.wake.wait(min(left, POLL_S))
                replica.wake.clear()
        self._reap(replica)
        self._set(replica, state=ReplicaState.STOPPED, url="", pid=None)

    def _reap(self, replica: _Replica) -> None:
        """SIGKILL the replica's process group and wait for the leader; once per process, since after
        that its pid (= group id) may be reused by an unrelated process."""
        with self._lock:
            proc, replica.process = replica.process, None
        if proc is not None:
            # The whole group, even when the leader already exited: helpers it forked may hold the GPU.
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    @staticmethod
    def _explain(error: str, log_path: Path, offset: int) -> str:
        tail = _log_tail(log_path, offset)
        return f"{error}; last log lines:\n{tail}" if tail else error


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session made the child its group's leader
    except ProcessLookupError:
        pass


def _log_tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines this attempt wrote to the replica's log (earlier attempts start before offset)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines()[1:] if line.strip()]  # [1:]: our own "starting" header
    return "\n".join(kept[-lines:])
