"""Autoscaling policies and decisions in SQL: set one per deployment, read it back as the policy object the
autoscaler runs, record each decision (a row and an event), list the history."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmctl.controlplane.autoscaling.policy import AutoscalePolicy, Decision, Mode, PolicyError
from llmctl.controlplane.db.models import AutoscaleDecision, AutoscaleMode, Autoscaling, Deployment, utcnow
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.services.deployments import get_deployment, set_replicas
from llmctl.controlplane.services.events import record_event

HISTORY_LIMIT = 50
STORED_FIELDS = ("min_replicas", "max_replicas", "target_queue", "target_kv_usage", "scale_up_window_s",
                 "scale_down_window_s", "max_step")
"""AutoscalePolicy's fields that are columns of the same name in `autoscaling` (besides `mode`, an enum there)."""


def policy_of(row: Autoscaling) -> AutoscalePolicy:
    return AutoscalePolicy(**{f: getattr(row, f) for f in STORED_FIELDS}, mode=Mode(row.mode.value))


def describe(policy: AutoscalePolicy) -> str:
    kv = f", KV usage {policy.target_kv_usage:g}" if policy.target_kv_usage is not None else ""
    return (f"{policy.mode.value}: {policy.min_replicas}-{policy.max_replicas} replicas, target queue "
            f"{policy.target_queue:g}{kv}, up after {policy.scale_up_window_s:g}s, down after "
            f"{policy.scale_down_window_s:g}s, at most {policy.max_step} per step")


def set_autoscaling(session: Session, *, name: str, policy: AutoscalePolicy, actor: str = "admin") -> Autoscaling:
    """Create or replace the deployment's policy (validated by AutoscalePolicy already)."""
    deployment = get_deployment(session, name, for_update=True)
    row = deployment.autoscaling
    if row is None:
        row = Autoscaling(deployment=deployment)
        session.add(row)
    before = describe(policy_of(row)) if row.id is not None else None
    for f in STORED_FIELDS:
        setattr(row, f, getattr(policy, f))
    row.mode = AutoscaleMode(policy.mode.value)
    row.updated_at, row.updated_by = utcnow(), actor
    session.flush()
    record_event(session, kind="autoscaling.set", deployment_name=name, actor=actor,
                 message=f"autoscaling of {name} set to {describe(policy)}"
                         + (f" (was {before})" if before else ""),
                 details={"policy": _policy_dict(policy)})
    return row


def make_policy(**fields) -> AutoscalePolicy:
    """AutoscalePolicy from request fields, its refusal as InvalidArgument."""
    try:
        return AutoscalePolicy(**fields)
    except PolicyError as e:
        raise InvalidArgument(str(e)) from e


def get_autoscaling(session: Session, name: str) -> Autoscaling | None:
    return get_deployment(session, name).autoscaling


def active_policies(session: Session) -> list[Autoscaling]:
    """Policies the autoscaler evaluates: on or advisory."""
    return list(session.scalars(select(Autoscaling).where(Autoscaling.mode != AutoscaleMode.OFF)))


def record_decision(session: Session, *, deployment: Deployment, decision: Decision, mode: Mode) -> AutoscaleDecision:
    """Store a decision that changes the count, apply it when the mode is on (the autoscaler is then the only
    writer of desired_replicas), and say so in an event."""
    applied = mode is Mode.ON and decision.changes
    rec = decision.recommendation
    row = AutoscaleDecision(deployment_name=deployment.name, mode=AutoscaleMode(mode.value), current=decision.current,
                            desired=decision.desired, applied=applied, signal=rec.signal, load=rec.load,
                            target=rec.target, reason=decision.reason)
    session.add(row)
    if applied:
        set_replicas(session, deployment, decision.desired, "autoscaler")
    verb = "scaled" if applied else "would scale (advisory)"
    record_event(session, kind="autoscaling.decision", deployment_name=deployment.name, actor="autoscaler",
                 message=f"{verb} {deployment.name} from {decision.current} to {decision.desired}: {decision.reason}",
                 details={"current": decision.current, "desired": decision.desired, "applied": applied,
                          "signal": rec.signal, "load": rec.load, "target": rec.target})
    session.flush()
    return row


def history(session: Session, name: str, limit: int = HISTORY_LIMIT) -> list[AutoscaleDecision]:
    """The deployment's decisions, newest first."""
    get_deployment(session, name)
    query = (select(AutoscaleDecision).where(AutoscaleDecision.deployment_name == name)
             .order_by(AutoscaleDecision.id.desc()).limit(limit))
    return list(session.scalars(query))


def _policy_dict(policy: AutoscalePolicy) -> dict:
    return {"min": policy.min_replicas, "max": policy.max_replicas, "target_queue": policy.target_queue,
            "target_kv_usage": policy.target_kv_usage, "scale_up_window_s": policy.scale_up_window_s,
            "scale_down_window_s": policy.scale_down_window_s, "max_step": policy.max_step,
            "mode": policy.mode.value}
