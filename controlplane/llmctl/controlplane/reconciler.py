"""The reconciler: level-triggered, it compares what each deployment should run with what agents report.

Every pass (each reconcile_interval_s, and right after anything changes) reads the whole picture from
SQL plus the connected agents' reports, decides, commits, and only then acts: the gateway's route table
first, then the commands to agents. So a replica leaves the route table before its StopReplica is sent,
and a new replica is routable as soon as it is READY.

Replica states in SQL, from the control plane's side:
  PENDING/STARTING/READY/FAILED  alive (a FAILED one is being retried by its agent)
  DRAINING                       the control plane asked it to stop; waiting for the agent to confirm
  STOPPED                        the control plane is done with it (stopped, gave up, or lost)
A replica is never brought back from DRAINING or STOPPED: a replacement gets a new id.

Rollouts: replicas of the current revision are added next to the old ones (surge); an old READY replica
is stopped only once a new one is READY in its place. A rollout fails when a new replica fails
permanently (max_failed_starts) or the new revision is not fully ready within rollout_timeout_s; the
deployment is then rolled back to the revision still serving. When its replicas fail permanently and
nothing serves to roll back to, no more of them are started until an operator changes the deployment.
The rules of what to start, stop and where are pure functions in planning.py.

Optimization runs start and stop their own TRIAL replicas (the optimizer job, on this same thread); they
are placed on nodes and count against capacity like any replica, are never routed, and are stopped here
when their run is over.

Quality sampling: while a deployment samples answers (sample rate > 0) it also keeps one SCORE replica of
its quality reference revision, placed like any replica but never routed by the gateway; its URL goes to
the quality worker instead, and the sample rates to the gateway's sampler.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from llmctl.controlplane.db.models import (
    AutoscaleMode,
    Deployment,
    Node,
    NodeState,
    OptimizationRun,
    Replica,
    ReplicaRole,
    ReplicaState,
    Revision,
    RunState,
)
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.fleet import LIVE_AGENT_STATES, Fleet
from llmctl.controlplane.gateway.model_route import ModelRoute, ModelRouteTable
from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
from llmctl.controlplane.gateway.sampling import SamplingTable
from llmctl.controlplane.gateway.semantic_cache import SemanticTable
from llmctl.controlplane.metrics import ControlPlaneMetrics, Snapshot
from llmctl.controlplane.planning import Member, NodeRoom, place, plan_deployment
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.rpc.convert import start_replica
from llmctl.controlplane.services import deployments as deployments_service
from llmctl.controlplane.services import model_routes as model_routes_service
from llmctl.controlplane.services import nodes as nodes_service
from llmctl.controlplane.services import quality as quality_service
from llmctl.controlplane.services.events import record_event
from llmctl.controlplane.services.replicas import create_replica, update_replica

logger = logging.getLogger("llmctl.controlplane.reconciler")


@dataclass(frozen=True)
class ReconcilePolicy:
    node_timeout_s: float = 15.0
    rollout_timeout_s: float = 300.0
    max_failed_starts: int = 3
    """A replica whose agent reports this many failed starts is given up (stopped and replaced)."""
    drain_grace_s: float = 30.0
    """How long a draining replica may finish requests in flight before its agent kills it."""
    resend_after_s: float = 10.0
    """A StopReplica the agent has not acted on is sent again after this long (it may have been lost)."""

    @property
    def restart_grace_s(self) -> float:
        """After a control-plane (re)start no node is declared dead for this long: agents were backing off
        while it was away, and a node that merely has not reconnected yet must not lose its replicas."""
        return 2 * self.node_timeout_s


def live_replicas(session: Session, deployment_id: int | None = None) -> list[Replica]:
    """Replicas that are not STOPPED, oldest first, with node, revision and deployment loaded."""
    query = (
        select(Replica)
        .where(Replica.state != ReplicaState.STOPPED)
        .options(selectinload(Replica.node), selectinload(Replica.revision), selectinload(Replica.deployment))
        .order_by(Replica.id)
    )
    if deployment_id is not None:
        query = query.where(Replica.deployment_id == deployment_id)
    return list(session.scalars(query))


# ---- the reconciler ------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """The control plane's memory of bringing one revision up (rebuilt from SQL after a restart)."""

    revision_id: int
    started: float
    done: bool = False
    failed_at: int | None = None
    """Deployment version at which the failure was reported; no more checks until the version changes."""
    hold_starts: bool = False
    """Its replicas fail permanently and nothing serves to roll back to: start no more of them until an
    operator changes the deployment (instead of crash-looping processes forever)."""


@dataclass(frozen=True)
class StopOrder:
    replica_id: int
    node: str | None
    drain: bool


@dataclass
class _Pass:
    """What one pass decided; carried out after its transaction commits."""

    gave_up: dict[int, str] = field(default_factory=dict)
    """Revision id -> error of a replica of it that failed permanently in this pass."""
    stops: list[StopOrder] = field(default_factory=list)
    starts: list[tuple[str, pb.StartReplica]] = field(default_factory=list)
    drains: list[str] = field(default_factory=list)
    known: dict[int, tuple[ReplicaState, str | None]] = field(default_factory=dict)
    endpoints: dict[str, list[Endpoint]] = field(default_factory=dict)
    sample_rates: dict[str, float] = field(default_factory=dict)
    semantic: dict[str, float] = field(default_factory=dict)
    """Deployments with the gateway's semantic cache on, and its similarity threshold."""
    model_routes: dict[str, ModelRoute] = field(default_factory=dict)
    holds: set[str] = field(default_factory=set)
    """Deployments autoscaled (mode on): their requests wait at the gateway for a first replica."""
    gpus: dict[int, str] = field(default_factory=dict)
    snapshot: Snapshot = field(default_factory=Snapshot)


class Reconciler:
    def __init__(self, db: sessionmaker[Session], fleet: Fleet, routes: RouteTable, policy: ReconcilePolicy,
                 metrics: ControlPlaneMetrics, sampling: SamplingTable | None = None,
                 model_routes: ModelRouteTable | None = None, semantic: SemanticTable | None = None) -> None:
        self.db, self.fleet, self.routes, self.policy, self.metrics = db, fleet, routes, policy, metrics
        self.sampling = sampling if sampling is not None else SamplingTable()
        self.semantic = semantic if semantic is not None else SemanticTable()
        self.model_routes = model_routes if model_routes is not None else ModelRouteTable()
        self._started = time.monotonic()
        self._rollouts: dict[str, Rollout] = {}
        self._unschedulable: set[str] = set()
        self._failed_revisions: set[int] = set()
        self._drained: set[str] = set()
        self._gpus: dict[int, str] = {}

    def gpu_of(self, replica_id: int) -> str | None:
        """The GPU model the replica runs on (the gateway prices requests by it); None on a CPU node."""
        return self._gpus.get(replica_id)

    def check_stale_nodes(self) -> None:
        """Healthy nodes silent for node_timeout_s become unhealthy; their replicas are then replaced."""
        if time.monotonic() - self._started < self.policy.restart_grace_s:
            return
        timeout = self.policy.node_timeout_s
        # Agents connected here that spoke lately are alive even when their heartbeats' writes failed (the
        # database was away longer than the timeout): without this, its return would cost every replica.
        heard = {s.node_name: datetime.fromtimestamp(s.heard_at, UTC) for s in self.fleet.sessions()}
        with session_scope(self.db) as session:
            stale = [n.name for n in nodes_service.mark_stale_nodes(session, timeout_s=timeout, heard=heard)]
        if stale:
            logger.warning("nodes missed heartbeats for %gs: %s", timeout, ", ".join(stale))
            self.reconcile()

    def reconcile(self) -> None:
        began = time.perf_counter()
        with self.fleet.lock:
            work = _Pass()
            with session_scope(self.db) as session:
                self._decide(session, work)
            self._gpus = work.gpus
            self._publish(work)
            self._send(work)
        self.metrics.snapshot = work.snapshot
        self.metrics.pass_seconds.observe(time.perf_counter() - began)

    # -- deciding (inside one transaction) ----------------------------------------------------------
    def _decide(self, session: Session, work: _Pass) -> None:
        nodes = list(session.scalars(select(Node).order_by(Node.name)))
        rows = [r for r in live_replicas(session)
                if not self._lost(session, r) and not self._give_up(session, r, work)]
        used = Counter(r.node_id for r in rows)
        rooms = [NodeRoom(n.name, used[n.id], n.max_replicas) for n in nodes
                 if n.state == NodeState.HEALTHY and self.fleet.session(n.name) is not None]
        by_deployment: dict[int, list[Replica]] = {}
        for r in rows:
            by_deployment.setdefault(r.deployment_id, []).append(r)
        deployments = deployments_service.list_deployments(session)
        by_name = {n.name: n for n in nodes}
        for deployment in deployments:
            mine = by_deployment.get(deployment.id, [])
            self._reconcile_deployment(session, deployment, [r for r in mine if r.role == ReplicaRole.SERVE],
                                       by_name, rooms, work)
            self._reconcile_scorer(session, deployment, [r for r in mine if r.role == ReplicaRole.SCORE],
                                   by_name, rooms, work)
            self._reconcile_trials(session, [r for r in mine if r.role == ReplicaRole.TRIAL], work)
            if deployment.semantic_cache_threshold is not None:
                work.semantic[deployment.name] = deployment.semantic_cache_threshold
        for name in set(self._rollouts) - {d.name for d in deployments}:
            del self._rollouts[name]
        work.model_routes = model_routes_service.published(session)
        rows = live_replicas(session)  # as decided: new ones in, stopped ones out
        self._finish_drains(session, nodes, rows, work)
        self._summarise(nodes, deployments, rows, work)

    def _lost(self, session: Session, replica: Replica) -> bool:
        """Stop counting a replica nobody runs any more: its node is gone or unhealthy, or its agent
        reconnected without it. Returns whether it was lost."""
        node = replica.node
        if node is None:
            reason = "lost: its node was removed"
        elif node.state == NodeState.UNHEALTHY:
            reason = f"lost: node {node.name} stopped sending heartbeats"
        else:
            agent = self.fleet.session(node.name)
            if agent is None or replica.state == ReplicaState.PENDING or replica.id in agent.reported:
                return False
            reason = f"lost: the agent on {node.name} no longer runs it (it restarted or lost it)"
        if replica.state == ReplicaState.DRAINING:
            update_replica(session, replica.id, state=ReplicaState.STOPPED.value)
        else:
            update_replica(session, replica.id, state=ReplicaState.STOPPED.value, error=reason)
            record_event(session, kind="replica.lost", deployment_name=replica.deployment.name,
                         node_name=node.name if node is not None else None,
                         message=f"replica {replica.id} of {replica.deployment.name} "
                                 f"(revision {replica.revision.number}) {reason}; it will be replaced",
                         details={"replica_id": replica.id, "revision": replica.revision.number,
                                  "reason": reason})
            self.metrics.actions.labels("lost").inc()
        self.fleet.forget_replica(replica.id)
        return True

    def _give_up(self, session: Session, replica: Replica, work: _Pass) -> bool:
        """Stop a replica whose agent failed to start it max_failed_starts times. Returns whether it did."""
        failures = replica.restarts + 1
        if replica.state != ReplicaState.FAILED or failures < self.policy.max_failed_starts:
            return False
        error = replica.error or "no error given"
        update_replica(session, replica.id, state=ReplicaState.STOPPED.value,
                       error=f"gave up after {failures} failed starts: {error}")
        record_event(session, kind="replica.gave_up", deployment_name=replica.deployment.name,
                     node_name=replica.node.name if replica.node is not None else None,
                     message=f"gave up on replica {replica.id} of {replica.deployment.name} "
                             f"(revision {replica.revision.number}) after {failures} failed starts: {error}",
                     details={"replica_id": replica.id, "revision": replica.revision.number, "error": error})
        if replica.role == ReplicaRole.SERVE:  # a scorer's failure says nothing about the rollout
            work.gave_up.setdefault(replica.revision_id, error)
        work.stops.append(StopOrder(replica.id, replica.node.name if replica.node else None, drain=False))
        self.metrics.actions.labels("give_up").inc()
        return True

    def _reconcile_deployment(self, session: Session, deployment: Deployment, rows: list[Replica],
                              nodes: dict[str, Node], rooms: list[NodeRoom], work: _Pass) -> None:
        revision = _current(deployment)
        rollout = self._track_rollout(session, deployment, revision, rows)
        if not rollout.done and rollout.failed_at is None:
            gave_up = work.gave_up.get(revision.id)
            error = gave_up or self._timed_out(deployment, revision, rows, rollout)
            if error is not None:
                self._fail_rollout(session, deployment, revision, rows, rollout, error,
                                   permanent=gave_up is not None)
                revision = _current(deployment)
                rollout = self._track_rollout(session, deployment, revision, rows)
        members = _members(rows)
        plan = plan_deployment(deployment.desired_replicas, revision.id, members,
                               may_start=not rollout.hold_starts)
        by_id = {r.id: r for r in rows}
        for replica_id, why in plan.stop:
            self._stop(session, by_id[replica_id], why, work)
        placed = place(plan.start, rooms)
        for node_name in placed:
            rows.append(create_replica(session, deployment=deployment, revision=revision,
                                       node=nodes[node_name]))
            self.metrics.actions.labels("start").inc()
        if len(placed) < plan.start:
            self._make_room(session, revision, rows, work)
        self._note_capacity(session, deployment, revision, plan.start - len(placed), rows)

    def _make_room(self, session: Session, revision: Revision, rows: list[Replica], work: _Pass) -> None:
        """A rollout with no room for a new replica beside the old ones (a node takes one per core or GPU)
        replaces them in place, one at a time, while another replica serves: the oldest READY replica of an
        older revision drains, and its slot goes to a new one once it has stopped (a Kubernetes rolling update
        with no surge room and one unavailable). A lone serving replica is not stopped: the deployment waits
        for room, and the unschedulable event says so."""
        if any(r.state == ReplicaState.DRAINING and r.revision_id != revision.id for r in rows):
            return  # a slot is being freed already
        serving = [r for r in rows if r.state == ReplicaState.READY]
        old = sorted((r for r in serving if r.revision_id != revision.id), key=lambda r: r.id)
        if old and len(serving) >= 2:
            self._stop(session, old[0], f"rolling out revision {revision.number}: no node has room for a new "
                                        "replica beside the old ones, so they are replaced one at a time", work)

    def _reconcile_scorer(self, session: Session, deployment: Deployment, rows: list[Replica],
                          nodes: dict[str, Node], rooms: list[NodeRoom], work: _Pass) -> None:
        """One SCORE replica of the quality reference while the deployment samples and serves."""
        reference = quality_service.reference_revision(deployment)
        sampling = deployment.quality_sample_rate > 0 and deployment.desired_replicas > 0
        work.sample_rates[deployment.name] = deployment.quality_sample_rate if sampling else 0.0
        wanted = reference if sampling else None
        members = _members(rows)
        plan = plan_deployment(1 if wanted is not None else 0, wanted.id if wanted is not None else -1, members)
        by_id = {r.id: r for r in rows}
        for replica_id, why in plan.stop:
            self._stop(session, by_id[replica_id], "quality sampling is off" if wanted is None else why, work)
        for node_name in place(plan.start, rooms):
            assert wanted is not None
            create_replica(session, deployment=deployment, revision=wanted, node=nodes[node_name],
                           role=ReplicaRole.SCORE)
            self.metrics.actions.labels("start").inc()

    def _reconcile_trials(self, session: Session, rows: list[Replica], work: _Pass) -> None:
        """Trial replicas are the optimizer's to start and stop; any whose run is over stops here too (a run
        that ended while its control plane was down, or a stop lost on the way)."""
        for replica in rows:
            run = session.get(OptimizationRun, replica.optimization_run_id) \
                if replica.optimization_run_id is not None else None
            if run is None or run.state != RunState.RUNNING:
                self._stop(session, replica, "its optimization run is over", work)

    def _track_rollout(self, session: Session, deployment: Deployment, revision: Revision,
                       rows: list[Replica]) -> Rollout:
        rollout = self._rollouts.get(deployment.name)
        first_sight = rollout is None
        if rollout is None or rollout.revision_id != revision.id:
            rollout = self._rollouts[deployment.name] = Rollout(revision.id, time.monotonic())
        if rollout.failed_at is not None and rollout.failed_at != deployment.version:
            # The operator changed something (scale, deploy): try again, with a fresh timeout.
            rollout.failed_at, rollout.hold_starts, rollout.started = None, False, time.monotonic()
        alive = [r for r in rows if r.state != ReplicaState.DRAINING]
        converged = (
            sum(r.state == ReplicaState.READY for r in alive if r.revision_id == revision.id)
            >= deployment.desired_replicas
            and all(r.revision_id == revision.id for r in alive)
        )
        if converged and not rollout.done:
            rollout.done = True
            if not first_sight:  # after a control-plane restart, a deployment already serving is no news
                record_event(session, kind="rollout.completed", deployment_name=deployment.name,
                             message=f"revision {revision.number} of {deployment.name} is ready on "
                                     f"{deployment.desired_replicas} replica(s)",
                             details={"revision": revision.number, "replicas": deployment.desired_replicas})
        return rollout

    def _timed_out(self, deployment: Deployment, revision: Revision, rows: list[Replica],
                   rollout: Rollout) -> str | None:
        waited = time.monotonic() - rollout.started
        if waited < self.policy.rollout_timeout_s:
            return None
        ready = sum(r.state == ReplicaState.READY and r.revision_id == revision.id for r in rows)
        errors = [r.error for r in rows if r.revision_id == revision.id and r.error]
        last = f"; last replica error: {errors[-1]}" if errors else ""
        return (f"only {ready} of {deployment.desired_replicas} replica(s) of revision {revision.number} "
                f"became ready within {self.policy.rollout_timeout_s:g}s{last}")

    def _fail_rollout(self, session: Session, deployment: Deployment, revision: Revision, rows: list[Replica],
                      rollout: Rollout, error: str, *, permanent: bool) -> None:
        self._failed_revisions.add(revision.id)
        # Never back to a revision that failed its own rollout: two broken revisions would take turns.
        serving = Counter(r.revision.number for r in rows if r.state == ReplicaState.READY
                          and r.revision_id != revision.id and r.revision_id not in self._failed_revisions)
        target = max(serving, key=lambda number: (serving[number], number)) if serving else None
        outcome = f"; rolling back to revision {target}" if target is not None else \
            "; no earlier revision is serving, so none was rolled back to"
        record_event(session, kind="rollout.failed", deployment_name=deployment.name, actor="reconciler",
                     message=f"rollout of {deployment.name} revision {revision.number} failed: "
                             f"{error}{outcome}",
                     details={"revision": revision.number, "error": error, "rolled_back_to": target})
        self.metrics.actions.labels("rollout_failed").inc()
        if target is None:
            rollout.failed_at, rollout.hold_starts = deployment.version, permanent
            return
        deployments_service.rollback(session, name=deployment.name, to_revision=target, actor="reconciler",
                                     reason=f"auto-rollback: {error}")
        self.metrics.actions.labels("rollback").inc()

    def _stop(self, session: Session, replica: Replica, why: str, work: _Pass) -> None:
        # A READY replica drains (requests in flight finish); any other has nothing in flight to lose.
        drain = replica.state == ReplicaState.READY
        update_replica(session, replica.id,
                       state=(ReplicaState.DRAINING if drain else ReplicaState.STOPPED).value)
        node = replica.node.name if replica.node is not None else None
        record_event(session, kind="replica.stopping", deployment_name=replica.deployment.name,
                     node_name=node,
                     message=f"stopping replica {replica.id} of {replica.deployment.name} "
                             f"(revision {replica.revision.number}): {why}",
                     details={"replica_id": replica.id, "revision": replica.revision.number, "reason": why,
                              "drain": drain})
        work.stops.append(StopOrder(replica.id, node, drain))
        self.metrics.actions.labels("stop").inc()

    def _note_capacity(self, session: Session, deployment: Deployment, revision: Revision, missing: int,
                       rows: list[Replica]) -> None:
        """One event when a deployment cannot get all its replicas placed, not one per pass."""
        if missing <= 0:
            self._unschedulable.discard(deployment.name)
            return
        if deployment.name in self._unschedulable:
            return
        self._unschedulable.add(deployment.name)
        have = sum(r.revision_id == revision.id and r.state != ReplicaState.DRAINING for r in rows)
        record_event(session, kind="deployment.unschedulable", deployment_name=deployment.name,
                     actor="reconciler",
                     message=f"no healthy connected node has room for {missing} more replica(s) of "
                             f"{deployment.name} (revision {revision.number}); it stays at {have} of "
                             f"{deployment.desired_replicas} until a node joins or frees a slot",
                     details={"missing": missing, "desired": deployment.desired_replicas,
                              "revision": revision.number})
        self.metrics.actions.labels("unschedulable").inc()

    def _finish_drains(self, session: Session, nodes: list[Node], rows: list[Replica], work: _Pass) -> None:
        occupied = {r.node_id for r in rows}
        for node in nodes:
            if node.state != NodeState.DRAINING:
                self._drained.discard(node.name)
                continue
            if node.id in occupied:
                continue
            agent = self.fleet.session(node.name)
            if agent is not None and not agent.drain_sent:
                work.drains.append(node.name)
            if node.name not in self._drained:
                self._drained.add(node.name)
                record_event(session, kind="node.drained", node_name=node.name, actor="reconciler",
                             message=f"node {node.name} is drained: its replicas run elsewhere now")

    @staticmethod
    def _summarise(nodes: list[Node], deployments: list[Deployment], rows: list[Replica],
                   work: _Pass) -> None:
        """Everything acted on after the commit: routes, commands, metrics."""
        for deployment in deployments:
            work.endpoints[deployment.name] = []
            if deployment.autoscaling is not None and deployment.autoscaling.mode == AutoscaleMode.ON:
                work.holds.add(deployment.name)
        ready_current: Counter[str] = Counter()
        for r in rows:
            node = r.node.name if r.node is not None else None
            work.known[r.id] = (r.state, node)
            if r.node is not None and r.node.gpus:
                work.gpus[r.id] = r.node.gpus[0]["name"]
            if r.state == ReplicaState.PENDING and node is not None:
                work.starts.append((node, start_replica(r)))
            if r.state == ReplicaState.READY and r.url and r.role == ReplicaRole.SERVE:
                work.endpoints[r.deployment.name].append(
                    Endpoint(r.id, r.url, r.deployment.name, r.revision.number))
                if r.revision_id == r.deployment.current_revision_id:
                    ready_current[r.deployment.name] += 1
        work.snapshot = Snapshot(
            nodes=tuple((n.name, n.state.value) for n in nodes),
            deployments=tuple((d.name, d.desired_replicas, ready_current[d.name]) for d in deployments),
        )

    # -- acting (after the commit) ---------------------------------------------------------------------
    def _publish(self, work: _Pass) -> None:
        for name, endpoints in work.endpoints.items():
            self.routes.set_endpoints(name, endpoints)
        for name in set(self.routes.deployments()) - set(work.endpoints):
            self.routes.remove(name)
        self.routes.set_holds(work.holds)
        self.sampling.replace(work.sample_rates)
        self.semantic.replace(work.semantic)
        self.model_routes.replace(work.model_routes)

    def _send(self, work: _Pass) -> None:
        grace = self.policy.drain_grace_s
        for order in work.stops:
            agent = self.fleet.session(order.node) if order.node is not None else None
            if agent is not None and agent.knows(order.replica_id):
                agent.stop_replica(order.replica_id, drain=order.drain, grace_s=grace)
        for node, start in work.starts:
            agent = self.fleet.session(node)
            if agent is not None and not agent.knows(start.replica_id):
                agent.start_replica(start)
        now = time.monotonic()
        for agent in self.fleet.sessions():
            # Replicas an agent runs that the control plane is done with (deleted deployment, replaced
            # while the node was away, a stop that got lost): stop them, again if the last stop went unheard.
            for replica_id, status in list(agent.reported.items()):
                wanted = _wanted_on(work.known.get(replica_id), agent.node_name)
                if wanted or status.state not in LIVE_AGENT_STATES:
                    continue
                last = agent.sent_stops.get(replica_id)
                if last is None or now - last >= self.policy.resend_after_s:
                    logger.info("asking %s to stop replica %d, which it should not run", agent.node_name,
                                replica_id)
                    drain = status.state == pb.REPLICA_STATE_READY
                    agent.stop_replica(replica_id, drain=drain, grace_s=grace)
        drained = pb.ControlMessage(drain=pb.DrainNode(reason="drained by the operator"))
        for node in work.drains:
            agent = self.fleet.session(node)
            if agent is not None and agent.send(drained):
                agent.drain_sent = True


def _wanted_on(known: tuple[ReplicaState, str | None] | None, node: str) -> bool:
    """Whether the control plane still wants this replica running on `node`."""
    return known is not None and known[0] != ReplicaState.DRAINING and known[1] == node


def _members(rows: list[Replica]) -> list[Member]:
    """The replicas planning counts: every one not already draining."""
    return [Member(r.id, r.revision_id, r.state == ReplicaState.READY,
                   r.node is not None and r.node.state == NodeState.DRAINING)
            for r in rows if r.state != ReplicaState.DRAINING]


def _current(deployment: Deployment) -> Revision:
    revision = deployment.current_revision
    assert revision is not None, f"deployment {deployment.name!r} has no current revision"
    return revision
