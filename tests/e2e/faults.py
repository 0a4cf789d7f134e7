"""The faults of issue 16, injected into a running Fleet under load; each scenario returns a FaultReport.

    cut_network(fleet)          agent a's connection to the control plane is reset and refused, then restored
    restart_postgres(fleet)     the control plane's PostgreSQL stops (fast shutdown) and starts again
    kill_control_plane(fleet)   kill -9 of `llmctl server`, then a new one on the same database and ports
    kill_agent(fleet)           kill -9 of agent a while streams run on its replica

Counting, over the requests the clients started during the scenario: `accepted` got a 200 (admitted by the
gateway, or answered by a replica); `lost` were accepted and ended neither with [DONE] nor with an error event
(a stream cut without a word, or one that hung); `error_events` were accepted and ended with an error event
(the replica died mid-stream and the client was told); `retried` is the gateway's count of attempts it moved
to another replica before the first byte; `http_5xx` answers with a 5xx status; `refused` got no answer at all.
tests/e2e/test_faults.py asserts on the reports; benchmarks/faults.py prints them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import create_engine, text

from llmctl.controlplane.errors import ControlPlaneError
from tests.e2e.fleet import DEPLOYMENT, NODES, PROXIED, Fleet, Load, Outcome, wait_until


@dataclass
class FaultReport:
    fault: str
    sent: int
    accepted: int
    completed: int
    error_events: int
    lost: int
    refused: int
    http_5xx: int
    retried: int
    recovered_s: float | None
    """From the fault (or its end, for a cut or an outage) to the fleet serving as before; what that means
    is in `recovered`."""
    recovered: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(fault: str, outcomes: list[Outcome], *, retried: int, recovered_s: float | None, recovered: str,
           **extra: Any) -> FaultReport:
    results = Counter(o.result for o in outcomes)
    accepted = [o for o in outcomes if o.accepted]
    return FaultReport(
        fault=fault, sent=len(outcomes), accepted=len(accepted), completed=results["ok"],
        error_events=sum(o.result == "error_event" for o in accepted),
        lost=sum(o.result in ("cut", "hang") for o in accepted), refused=results["refused"],
        http_5xx=sum(o.status is not None and o.status >= 500 for o in outcomes), retried=retried,
        recovered_s=None if recovered_s is None else round(recovered_s, 2), recovered=recovered,
        extra={"results": dict(results), **extra})


def store_problems(fleet: Fleet) -> list[str]:
    """Invariants of the control plane's store, read straight from SQL: each deployment has its desired
    number of live serving replicas, all READY, of its current revision, on healthy nodes; revisions are
    numbered 1..n; each tenant was created once (one row, one tenant.created event)."""
    engine = create_engine(fleet.postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    problems = []
    try:
        with engine.connect() as sql:
            for name, desired, current in sql.execute(text(
                    "SELECT name, desired_replicas, current_revision_id FROM deployments")):
                live = sql.execute(text(
                    "SELECT r.id, r.state, r.revision_id, n.state FROM replicas r LEFT JOIN nodes n ON n.id = r.node_id "
                    "JOIN deployments d ON d.id = r.deployment_id WHERE d.name = :name AND r.role = 'serve' "
                    "AND r.state NOT IN ('stopped', 'draining')"), {"name": name}).all()
                if len(live) != desired or any(r[1] != "ready" or r[2] != current or r[3] != "healthy" for r in live):
                    problems.append(f"deployment {name} wants {desired} READY replicas of revision id {current} on "
                                    f"healthy nodes; live: {[tuple(r) for r in live]}")
                numbers = sql.execute(text(
                    "SELECT v.number FROM revisions v JOIN deployments d ON d.id = v.deployment_id "
                    "WHERE d.name = :name ORDER BY v.number"), {"name": name}).scalars().all()
                if numbers != list(range(1, len(numbers) + 1)):
                    problems.append(f"deployment {name} has revisions {numbers}")
            tenants = Counter(sql.execute(text("SELECT name FROM tenants")).scalars())
            created = Counter(json.loads(d)["tenant"] if isinstance(d, str) else d["tenant"] for d in
                              sql.execute(text("SELECT details FROM events WHERE kind = 'tenant.created'")).scalars())
            if tenants != created:
                problems.append(f"tenant rows and tenant.created events differ: {tenants - created} / {created - tenants}")
    finally:
        engine.dispose()
    return problems


def usage_requests(fleet: Fleet) -> int:
    """Requests the clients' tenant is billed for (usage rows), as the control plane reports them."""
    return sum(row.requests for row in fleet.admin.get_usage("clients"))


def settled_usage(fleet: Fleet, at_least: int = 0, timeout_s: float = 30) -> int:
    """The usage count once it has reached `at_least` and stopped moving (rows are written after each
    answer, and retried while the database is away); whatever it is after timeout_s otherwise."""
    deadline, last = time.monotonic() + timeout_s, -1
    while True:
        try:
            now = usage_requests(fleet)
        except ControlPlaneError:
            now = -1
        if (now >= at_least and now == last) or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.5)


def _gateway_load(fleet: Fleet, concurrency: int, max_tokens: int) -> Load:
    load = Load([fleet.gateway], fleet.api_key, concurrency=concurrency, max_tokens=max_tokens).start()
    wait_until("requests served before the fault", lambda: sum(o.result == "ok" for o in load.outcomes) >= 2, 60)
    return load


def _first_ok_after(outcomes: list[Outcome], t: float) -> float | None:
    """How long after `t` the first request that started after it succeeded."""
    ends = [o.ended for o in outcomes if o.started >= t and o.result == "ok"]
    return min(ends) - t if ends else None


# ---- the faults ------------------------------------------------------------------------------------


def cut_network(fleet: Fleet, *, cut_s: float = 3.0, after_s: float = 2.0, concurrency: int = 3,
                max_tokens: int = 32) -> FaultReport:
    """Agent a's gRPC connections are reset and new ones refused for cut_s (below the node timeout), then the
    network comes back. The replicas keep serving (the gateway reaches them directly); the agent reconnects
    with backoff and its Hello hands its replica over: nothing is started twice."""
    replicas = fleet.settled()
    pids = {name: fleet.replica_pids(name) for name in NODES}
    connections, failures, last_event = fleet.connections(PROXIED), fleet.upstream_failures(), fleet.admin.last_event_id()
    load = _gateway_load(fleet, concurrency, max_tokens)
    fleet.proxy.cut()
    time.sleep(cut_s)
    restored = time.monotonic()
    fleet.proxy.restore()
    wait_until("agent a to reconnect", lambda: fleet.connections(PROXIED) > connections, 60)
    reconnected_s = time.monotonic() - restored
    time.sleep(after_s)
    outcomes = load.stop()
    kinds = Counter(e.kind for e in fleet.admin.list_events(after_id=last_event))
    return report(
        "network cut agent<->control plane", outcomes, retried=fleet.upstream_failures() - failures,
        recovered_s=reconnected_s, recovered="restore -> agent reconnected", cut_s=cut_s,
        reconnects=fleet.connections(PROXIED) - connections, replicas_before=sorted(replicas),
        replicas_after=sorted(fleet.settled(30)), pids_unchanged={n: fleet.replica_pids(n) == pids[n] for n in NODES},
        events=dict(kinds), store_problems=store_problems(fleet))


class _AdminWriter:
    """Creates tenants one after another (names prefix-0, prefix-1, ...), noting which calls were answered OK."""

    def __init__(self, fleet: Fleet, prefix: str) -> None:
        self.fleet, self.prefix = fleet, prefix
        self.acked: list[str] = []
        self.failed: dict[str, str] = {}
        self.last_ok = False
        self.acked_at: list[float] = []  # time.monotonic() of each acknowledged write
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admin-writer", daemon=True)

    def start(self) -> _AdminWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(30)

    def _run(self) -> None:
        i = 0
        while not self._halt.is_set():
            name = f"{self.prefix}-{i}"
            i += 1
            try:
                self.fleet.admin.create_tenant(name)
                self.acked.append(name)
                self.acked_at.append(time.monotonic())
                self.last_ok = True
            except ControlPlaneError as e:
                self.failed[name] = f"{type(e).__name__}: {e.message[:160]}"
                self.last_ok = False
                time.sleep(0.1)
            time.sleep(0.05)

    def first_ack_after(self, t: float) -> float | None:
        later = [at for at in self.acked_at if at >= t]
        return min(later) - t if later else None

    def check(self) -> dict[str, Any]:
        """Every acknowledged tenant exists; of the failed calls, how many took effect anyway (in doubt)."""
        names = {t.name for t in self.fleet.admin.list_tenants()}
        return {"writes_acked": len(self.acked), "writes_failed": len(self.failed), "writes_resumed": self.last_ok,
                "acked_missing": sorted(set(self.acked) - names),
                "failed_but_stored": sorted(set(self.failed) & names),
                "failure_examples": sorted(set(self.failed.values()))[:3]}


def restart_postgres(fleet: Fleet, *, down_s: float = 2.0, after_s: float = 3.0, concurrency: int = 3,
                     max_tokens: int = 32) -> FaultReport:
    """PostgreSQL stops (fast shutdown: every session is terminated) for down_s and starts again, while
    clients stream through the gateway and an operator creates tenants. Requests that reach the gateway while
    the database is away cannot have their key checked (503, reported); those already accepted finish; usage
    rows that could not be written are written once it is back; admin writes fail with UNAVAILABLE."""
    replicas = fleet.settled()
    billed, failures, last_event = settled_usage(fleet), fleet.upstream_failures(), fleet.admin.last_event_id()
    writer = _AdminWriter(fleet, f"pg-{int(time.time())}").start()
    load = _gateway_load(fleet, concurrency, max_tokens)
    stopped = time.monotonic()
    fleet.postgres.restart(down_s)
    started = time.monotonic()
    wait_until("an admin write stored after the restart", lambda: writer.first_ack_after(started) is not None, 60)
    time.sleep(after_s)
    outcomes = load.stop()
    writer.stop()
    accepted = sum(o.accepted for o in outcomes)
    billed_now = settled_usage(fleet, billed + accepted)
    kinds = Counter(e.kind for e in fleet.admin.list_events(after_id=last_event))
    return report(
        f"PostgreSQL restart ({down_s:g} s down)", outcomes, retried=fleet.upstream_failures() - failures,
        recovered_s=writer.first_ack_after(started), recovered="PostgreSQL up -> admin writes stored again",
        down_s=round(started - stopped, 2), usage_rows_expected=accepted, usage_rows_written=billed_now - billed,
        replicas_before=sorted(replicas), replicas_after=sorted(fleet.settled(30)), events=dict(kinds),
        http_5xx_examples=sorted({o.detail[:120] for o in outcomes if o.status and o.status >= 500})[:3],
        **writer.check(), store_problems=store_problems(fleet))


def kill_control_plane(fleet: Fleet, *, restart_after_s: float = 1.0, after_s: float = 2.0,
                       concurrency: int = 2, max_tokens: int = 32) -> FaultReport:
    """kill -9 of `llmctl server` while clients stream straight to the replicas and through the gateway and an
    operator creates tenants; a new server starts restart_after_s later (what `llmctl up` does, after its 1 s
    backoff) on the same database and ports. The report counts the clients of the replicas; the gateway's own
    clients, whose streams die with the server process (docs/reliability.md), are in extra["gateway"]."""
    replicas = fleet.settled()
    pids = {name: fleet.replica_pids(name) for name in NODES}
    connections = {name: fleet.connections(name) for name in NODES}
    billed = settled_usage(fleet)
    direct = Load([url for _, url in replicas.values()], None, concurrency=concurrency, max_tokens=max_tokens).start()
    writer = _AdminWriter(fleet, f"cp-{int(time.time())}").start()
    through = _gateway_load(fleet, concurrency, max_tokens)
    killed = time.monotonic()
    fleet.kill_server()
    time.sleep(restart_after_s)
    fleet.start_server()
    server_up_s = time.monotonic() - killed
    wait_until("both agents to reconnect", lambda: all(fleet.connections(n) > connections[n] for n in NODES), 60)
    reconnected_s = time.monotonic() - killed
    wait_until("the gateway to serve again", lambda: _first_ok_after(through.outcomes, killed) is not None, 60)
    time.sleep(after_s)
    writer.stop()
    outcomes, gateway = direct.stop(), through.stop()
    through_report = report("through the gateway", gateway, retried=0,
                            recovered_s=_first_ok_after(gateway, killed), recovered="kill -> gateway serves")
    # Usage rows are written just after each answer: those of answers finished right before the kill are lost.
    answered = sum(o.result in ("ok", "error_event") for o in gateway)
    unbilled = answered - (settled_usage(fleet, billed + answered, timeout_s=10) - billed)
    return report(
        "control plane kill -9", outcomes, retried=0, recovered_s=reconnected_s,
        recovered="kill -> both agents reconnected", server_up_s=round(server_up_s, 2),
        replicas_before=sorted(replicas),
        replicas_after=sorted(fleet.settled(30)), pids_unchanged={n: fleet.replica_pids(n) == pids[n] for n in NODES},
        gateway={k: v for k, v in through_report.as_dict().items() if k not in ("fault", "extra")}
        | {"results": through_report.extra["results"], "answered_but_unbilled": unbilled},
        **writer.check(), store_problems=store_problems(fleet))


def kill_agent(fleet: Fleet, *, victim: str = PROXIED, after_s: float = 3.0, concurrency: int = 4,
               max_tokens: int = 160) -> FaultReport:
    """kill -9 of an agent (its replica dies with it) while long streams run on that replica. Attempts that
    find it dead before their first byte move to the other replica; streams cut mid-way end with an error
    event; once the node is marked lost its replica is started on the other node."""
    replicas = fleet.settled()
    doomed = next(rid for rid, (node, _) in replicas.items() if node == victim)
    failures, last_event = fleet.upstream_failures(), fleet.admin.last_event_id()
    load = _gateway_load(fleet, concurrency, max_tokens)
    # Kill while a stream is past its first byte on the doomed replica: in flight there, and again 0.2 s later.
    wait_until(f"streams in flight on replica {doomed}", lambda: _outstanding(fleet, doomed) >= 1, 30, 0.02)
    time.sleep(0.2)
    wait_until(f"streams in flight on replica {doomed}", lambda: _outstanding(fleet, doomed) >= 1, 30, 0.02)
    killed = time.monotonic()
    fleet.kill_agent(victim)
    wait_until(f"node {victim} marked lost", lambda: fleet.node_states().get(victim) == "unhealthy",
               fleet.node_timeout_s * 3)
    lost_at = time.monotonic()
    moved = wait_until("two READY replicas again", lambda: len(r := fleet.ready()) == 2 and doomed not in r and r,
                       240, 0.25)
    rescheduled_s = time.monotonic() - killed
    time.sleep(after_s)
    outcomes = load.stop()
    retried = fleet.upstream_failures() - failures
    kinds = Counter(e.kind for e in fleet.admin.list_events(after_id=last_event))
    after_lost = [o for o in outcomes if o.started >= lost_at]
    return report(
        f"agent kill -9 (node {victim})", outcomes, retried=retried, recovered_s=rescheduled_s,
        recovered="kill -> replacement READY", marked_lost_s=round(lost_at - killed, 2),
        after_lost={"sent": len(after_lost), "http_5xx": sum(o.status is not None and o.status >= 500
                                                             for o in after_lost),
                    "not_ok": sum(o.result != "ok" for o in after_lost)},
        replicas_before=sorted(replicas), replicas_after=sorted(moved), nodes_after=sorted(n for n, _ in moved.values()),
        error_event_examples=sorted({o.detail[:120] for o in outcomes if o.result == "error_event"})[:2],
        events=dict(kinds), store_problems=store_problems(fleet), deployment=DEPLOYMENT)


def _outstanding(fleet: Fleet, replica_id: int) -> float:
    import httpx

    text = httpx.get(fleet.gateway + "/metrics", timeout=5, trust_env=False).text
    for line in text.splitlines():
        if line.startswith("llmctl_gateway_outstanding_requests{") and f'replica_id="{replica_id}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
