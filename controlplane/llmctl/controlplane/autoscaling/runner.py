"""The autoscaler job: every AUTOSCALE_EVERY_S, for each deployment with a policy on or advisory, read its
serving replicas' latest engine statistics from the fleet's telemetry (never from SQL: it is in memory), run
the policy, and record (and, when on, apply) each decision that changes the count. The reconciler then starts
or stops replicas; a count beyond the fleet's room is capped there, with its `deployment.unschedulable` event.

The windows live in memory: after a control-plane restart they fill again before anything moves (see
autoscaling/policy.py), which errs on the side of keeping the replicas that run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.autoscaling.policy import (
    AutoscalePolicy,
    Autoscaler,
    Decision,
    Evaluation,
    Mode,
    ReplicaReading,
    Signals,
)
from llmctl.controlplane.db.models import Deployment, NodeState, ReplicaRole, ReplicaState
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.fleet import Fleet
from llmctl.controlplane.reconciler import live_replicas
from llmctl.controlplane.services import autoscaling as service

logger = logging.getLogger("llmctl.controlplane.autoscaling")

AUTOSCALE_EVERY_S = 2.0


class AutoscaleJob:
    def __init__(self, db: sessionmaker[Session], fleet: Fleet, *, on_change: Callable[[], None] | None = None,
                 gateway_queue: Callable[[str], int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """on_change: called after a decision was applied (wake the reconciler); gateway_queue(deployment): the
        requests the gateway holds for it (gateway/holding.py)."""
        self._db, self._fleet, self._on_change, self._clock = db, fleet, on_change, clock
        self._gateway_queue = gateway_queue
        self._scalers: dict[int, tuple[AutoscalePolicy, Autoscaler]] = {}
        self._advised: dict[int, tuple[int, int]] = {}
        """Deployment id -> (current, desired) of the last advisory decision recorded, so an unchanged
        suggestion is one row, not one per tick."""
        self.evaluations: dict[str, Evaluation] = {}

    def tick(self) -> None:
        now = self._clock()
        applied = False
        seen: set[int] = set()
        evaluations = {}
        with session_scope(self._db) as session:
            for row in service.active_policies(session):
                deployment = row.deployment
                policy = service.policy_of(row)
                seen.add(deployment.id)
                known = self._scalers.get(deployment.id)
                if known is None or known[0] != policy:  # a new or changed policy starts its windows afresh
                    known = self._scalers[deployment.id] = (policy, Autoscaler(policy))
                decision = known[1].decide(deployment.desired_replicas, self.signals(session, deployment), now)
                evaluations[deployment.name] = Evaluation.of(deployment.name, policy.mode, decision)
                if decision.changes and self._worth_recording(deployment.id, policy.mode, decision):
                    service.record_decision(session, deployment=deployment, decision=decision, mode=policy.mode)
                    applied |= policy.mode is Mode.ON
        for gone in set(self._scalers) - seen:
            del self._scalers[gone]
            self._advised.pop(gone, None)
        self.evaluations = evaluations
        if applied and self._on_change is not None:
            self._on_change()

    def _worth_recording(self, deployment_id: int, mode: Mode, decision: Decision) -> bool:
        if mode is Mode.ON:
            return True
        key = (decision.current, decision.desired)
        if self._advised.get(deployment_id) == key:
            return False
        self._advised[deployment_id] = key
        return True

    def signals(self, session: Session, deployment: Deployment) -> Signals:
        """The deployment's serving replicas as the policy sees them (trials and scorers are not load)."""
        wall = time.time()
        readings = []
        for replica in live_replicas(session, deployment.id):
            if replica.role != ReplicaRole.SERVE:
                continue
            ready = (replica.state == ReplicaState.READY and replica.node is not None
                     and replica.node.state == NodeState.HEALTHY)
            telemetry = self._fleet.replica_telemetry(replica.id)
            if telemetry is None:
                readings.append(ReplicaReading(replica.id, ready))
                continue
            stats = telemetry.stats
            readings.append(ReplicaReading(
                replica.id, ready,
                waiting=float(stats.waiting) if stats.HasField("waiting") else None,
                running=float(stats.running) if stats.HasField("running") else None,
                kv_usage=stats.kv_cache_usage if stats.HasField("kv_cache_usage") else None,
                age_s=max(0.0, wall - telemetry.received_at),
            ))
        held = self._gateway_queue(deployment.name) if self._gateway_queue is not None else None
        return Signals(tuple(readings), gateway_queue=held)
