"""The replica supervisor with real `llmctl serve` child processes over a tiny random Llama."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from llmctl.agent.replicas import ReplicaError, ReplicaState, ReplicaStatus, ReplicaSupervisor, UnknownReplica
from tests.factories import make_tiny_llama

MODEL = "tiny"
ENGINE = {"dtype": "float32", "num_threads": 1, "num_kv_blocks": 128}
SHARED = 1  # the replica most tests share; each spawn costs seconds of torch import


class Recorder:
    """The on_change callback: keeps every status and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[ReplicaStatus] = []
        self._cond = threading.Condition()

    def __call__(self, status: ReplicaStatus) -> None:
        with self._cond:
            self.events.append(status)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, since: int, match: Callable[[ReplicaStatus], bool], timeout: float = 90) -> ReplicaStatus:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for status in self.events[since:]:
                    if match(status):
                        return status
                left = deadline - time.monotonic()
                assert left > 0, f"no matching status within {timeout}s; saw {self.events[since:]}"
                self._cond.wait(left)

    def states(self, replica_id: int, since: int = 0) -> list[ReplicaState]:
        with self._cond:
            return [s.state for s in self.events[since:] if s.replica_id == replica_id]


def start(supervisor: ReplicaSupervisor, replica_id: int, model: str) -> None:
    supervisor.start(replica_id, deployment="chat", revision=1, model=model, engine_config=ENGINE,
                     served_model_name=MODEL)


def chat(url: str) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hello world!"}], "max_tokens": 4,
    })
    assert r.status_code == 200, r.text
    return r.json()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A longer context than the shared tiny_llama, so a streaming request can outlast a drain's start.
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-2k"), max_position_embeddings=2048)


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def supervisor(recorder: Recorder, tmp_path_factory: pytest.TempPathFactory):
    sup = ReplicaSupervisor(recorder, log_dir=tmp_path_factory.mktemp("replica-logs"), max_backoff_s=2)
    yield sup
    sup.close()


@pytest.fixture
def ready(supervisor: ReplicaSupervisor, recorder: Recorder, model_path: Path) -> ReplicaStatus:
    """The shared replica, READY (started again if an earlier test stopped it)."""
    try:
        supervisor.status(SHARED)
    except UnknownReplica:
        start(supervisor, SHARED, str(model_path))
    deadline = time.monotonic() + 90
    while (status := supervisor.status(SHARED)).state is not ReplicaState.READY:
        assert time.monotonic() < deadline, f"shared replica not READY: {status}"
        time.sleep(0.05)
    return status


def test_started_replica_reports_starting_then_ready_and_serves_chat(ready: ReplicaStatus, recorder: Recorder):
    assert ready.state == ReplicaState.READY, ready.error
    assert ready.url.startswith("http://127.0.0.1:") and alive(ready.pid)
    assert recorder.states(SHARED)[:2] == [ReplicaState.STARTING, ReplicaState.READY]
    data = chat(ready.url)
    assert data["model"] == MODEL and data["usage"]["completion_tokens"] >= 1


def test_killed_replica_is_reported_failed_then_restarted_on_a_new_pid(ready: ReplicaStatus, recorder: Recorder):
    mark = recorder.mark()
    os.kill(ready.pid, signal.SIGKILL)
    failed = recorder.wait_for(mark, lambda s: s.replica_id == SHARED and s.state == ReplicaState.FAILED)
    assert "exited with code -9 while serving" in failed.error and failed.url == ""
    back = recorder.wait_for(mark, lambda s: s.replica_id == SHARED and s.state == ReplicaState.READY)
    assert back.restarts == ready.restarts + 1
    assert back.pid != ready.pid and not alive(ready.pid)
    assert chat(back.url)["choices"][0]["message"]["role"] == "assistant"


def test_unknown_model_fails_with_the_engine_error_and_stops_when_told(supervisor: ReplicaSupervisor,
                                                                      recorder: Recorder):
    mark = recorder.mark()
    start(supervisor, 2, "no-such-model")
    failed = recorder.wait_for(mark, lambda s: s.replica_id == 2 and s.state == ReplicaState.FAILED)
    assert "exited with code 2 during startup" in failed.error
    assert "unknown model 'no-such-model'" in failed.error  # the operator sees why, from the child's log
    supervisor.stop(2, wait=True)
    assert recorder.states(2, mark)[-1] == ReplicaState.STOPPED
    assert 2 not in [s.replica_id for s in supervisor.statuses()]
    with pytest.raises(UnknownReplica, match="no replica 2"):
        supervisor.stop(2)


def test_replica_not_healthy_in_time_is_killed_failed_and_retried(model_path: Path, tmp_path: Path):
    recorder = Recorder()
    with ReplicaSupervisor(recorder, log_dir=tmp_path, startup_timeout_s=0.5, max_backoff_s=1) as supervisor:
        start(supervisor, 3, str(model_path))
        failed = recorder.wait_for(0, lambda s: s.state == ReplicaState.FAILED)
        assert "not healthy within 0.5s" in failed.error
        first_pid = recorder.events[0].pid
        assert first_pid is not None and not alive(first_pid)
        retry = recorder.wait_for(0, lambda s: s.state == ReplicaState.STARTING and s.restarts == 1)
        assert retry.pid not in (None, first_pid)
    assert recorder.events[-1].state == ReplicaState.STOPPED and not alive(retry.pid)


def test_start_refuses_a_different_spec_under_a_live_id(ready: ReplicaStatus, supervisor: ReplicaSupervisor,
                                                        model_path: Path):
    start(supervisor, SHARED, str(model_path))  # the same command again (a resent StartReplica) is a no-op
    with pytest.raises(ReplicaError, match="already runs chat revision 1"):
        supervisor.start(SHARED, deployment="chat", revision=2, model=str(model_path), engine_config=ENGINE,
                         served_model_name=MODEL)
    assert supervisor.status(SHARED).pid == ready.pid


def test_draining_stop_lets_a_streaming_request_finish(ready: ReplicaStatus, supervisor: ReplicaSupervisor,
                                                       recorder: Recorder):
    mark = recorder.mark()
    # ~1 s of decoding on a CPU: still running when SIGTERM arrives, done well within uvicorn's
    # 5 s shutdown grace (`llmctl serve` cancels streams still open after that).
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 800, "ignore_eos": True, "stream": True}
    chunks: list[dict] = []
    with httpx.stream("POST", f"{ready.url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                chunks.append(json.loads(line.removeprefix("data: ")))
                break
        supervisor.stop(SHARED, drain=True, grace_s=30)
        recorder.wait_for(mark, lambda s: s.replica_id == SHARED and s.state == ReplicaState.DRAINING)
        rest = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    chunks += [json.loads(c) for c in rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    recorder.wait_for(mark, lambda s: s.replica_id == SHARED and s.state == ReplicaState.STOPPED)
    assert recorder.states(SHARED, mark) == [ReplicaState.DRAINING, ReplicaState.STOPPED]
    assert not alive(ready.pid)


def test_close_leaves_no_child_process_alive(model_path: Path, tmp_path: Path):
    recorder = Recorder()
    supervisor = ReplicaSupervisor(recorder, log_dir=tmp_path)
    start(supervisor, 7, str(model_path))
    status = recorder.wait_for(0, lambda s: s.state in (ReplicaState.READY, ReplicaState.FAILED))
    assert status.state == ReplicaState.READY, status.error
    leader = psutil.Process(status.pid)
    pids = [status.pid, *(p.pid for p in leader.children(recursive=True))]
    supervisor.close()
    assert [pid for pid in pids if alive(pid)] == []
    assert supervisor.statuses() == [] and recorder.events[-1].state == ReplicaState.STOPPED
    with pytest.raises(ReplicaError, match="closed"):
        start(supervisor, 8, str(model_path))


AGENT = textwrap.dedent("""
    import sys, time
    from llmctl.agent.replicas import ReplicaSupervisor
    def report(status):
        if status.pid:
            print(status.pid, flush=True)
    sup = ReplicaSupervisor(report, log_dir=sys.argv[2])
    sup.start(1, deployment="d", revision=1, model=sys.argv[1], engine_config={}, served_model_name="m")
    time.sleep(600)
""")


def test_children_die_with_a_sigkilled_agent(model_path: Path, tmp_path: Path):
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(model_path), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        child = int(agent.stdout.readline())
        assert alive(child)
    finally:
        agent.kill()  # no close(), no atexit: only PR_SET_PDEATHSIG can take the child along
        agent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphaned = alive(child)
    if orphaned:
        os.killpg(child, signal.SIGKILL)  # do not leave it running for the rest of the suite
    assert not orphaned, f"replica {child} outlived its SIGKILLed agent"
