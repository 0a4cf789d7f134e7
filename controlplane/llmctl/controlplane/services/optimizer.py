"""Optimization runs in SQL: start (one running run per deployment), read, cancel, finish, and the report.

The runner (controlplane/optimizer/runner.py) moves runs forward; everything it knows lives in these rows,
so a restarted control plane carries on where the last one stopped.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from llmctl.controlplane.db.models import (
    Measurement,
    MeasurementState,
    OptimizationRun,
    OptimizationStep,
    Replica,
    ReplicaRole,
    ReplicaState,
    RunState,
    StepState,
    utcnow,
)
from llmctl.controlplane.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from llmctl.controlplane.optimizer.options import OptimizeOptions
from llmctl.controlplane.services.deployments import get_deployment
from llmctl.controlplane.services.events import record_event

BASELINE = "baseline"
OPEN_STEP_STATES = (StepState.PENDING, StepState.RUNNING)
DEFAULT_LIST_LIMIT = 20


def start_run(session: Session, *, name: str, options: OptimizeOptions, actor: str = "admin") -> OptimizationRun:
    """A RUNNING run of deployment `name`, with its baseline step; AlreadyExists while another one runs."""
    from llmctl.controlplane.optimizer.techniques import technique

    for technique_name in options.techniques or ():
        try:
            technique(technique_name)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    deployment = get_deployment(session, name, for_update=True)
    running = _running(session, deployment.id)
    if running is not None:
        raise _already_running(running, name)
    current = deployment.current_revision
    assert current is not None, f"deployment {name!r} has no current revision"
    now = utcnow()
    run = OptimizationRun(
        deployment=deployment, running_deployment_id=deployment.id, state=RunState.RUNNING, goal=options.goal,
        options=options.to_dict(), created_by=actor, created_at=now, updated_at=now,
        baseline_revision=current.number, summary="starting: choosing a node for the trial replicas",
    )
    run.steps.append(OptimizationStep(number=0, technique=BASELINE, state=StepState.PENDING, change={},
                                      engine_config=dict(current.engine_config), reason=""))
    session.add(run)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # Another control plane (or a concurrent call) started one between our check and our insert.
        raise _already_running(_running(session, deployment.id), name) from None
    record_event(session, kind="optimize.started", deployment_name=name, actor=actor,
                 message=f"optimization run {run.id} of {name} started: goal {options.goal}"
                         f"{' (advisory)' if options.advisory else ''}, from revision {current.number}",
                 details={"run": run.id, "goal": options.goal, "options": options.to_dict()})
    return run


def _running(session: Session, deployment_id: int) -> OptimizationRun | None:
    return session.scalar(select(OptimizationRun).where(OptimizationRun.running_deployment_id == deployment_id))


def _already_running(run: OptimizationRun | None, name: str) -> AlreadyExists:
    which = f"run {run.id} " if run is not None else "another run "
    how = f"`llmctl optimize cancel {run.id}`" if run is not None else "`llmctl optimize cancel`"
    return AlreadyExists(f"optimization {which}is already running on {name}; follow it with `llmctl optimize "
                         f"status{' ' + str(run.id) if run is not None else ''}` or stop it with {how}")


def get_run(session: Session, *, run_id: int = 0, name: str = "") -> OptimizationRun:
    """Run `run_id`, or the newest run of deployment `name`."""
    if run_id:
        run = session.get(OptimizationRun, run_id, options=[selectinload(OptimizationRun.deployment)])
        if run is None:
            raise NotFound(f"optimization run {run_id} does not exist; `llmctl optimize list` shows the runs")
        return run
    if not name:
        raise InvalidArgument("name a run id or a deployment")
    deployment = get_deployment(session, name)
    run = session.scalar(select(OptimizationRun).where(OptimizationRun.deployment_id == deployment.id)
                         .order_by(OptimizationRun.id.desc()).limit(1))
    if run is None:
        raise NotFound(f"deployment {name} has no optimization runs; start one with `llmctl optimize {name} "
                       "--goal throughput`")
    return run


def list_runs(session: Session, *, name: str = "", limit: int = 0) -> list[OptimizationRun]:
    query = select(OptimizationRun).options(selectinload(OptimizationRun.deployment))
    if name:
        query = query.where(OptimizationRun.deployment_id == get_deployment(session, name).id)
    if limit < 0:
        raise InvalidArgument(f"limit must be >= 0, got {limit}")
    return list(session.scalars(query.order_by(OptimizationRun.id.desc()).limit(limit or DEFAULT_LIST_LIMIT)))


def running_runs(session: Session) -> list[OptimizationRun]:
    return list(session.scalars(select(OptimizationRun).where(OptimizationRun.state == RunState.RUNNING)
                                .order_by(OptimizationRun.id)))


def cancel_run(session: Session, *, run_id: int = 0, name: str = "", actor: str = "admin") -> tuple[
        OptimizationRun, list[Measurement]]:
    """Cancel a running run; returns it and the measurements that were still pending (to stop on agents)."""
    if not run_id:
        deployment = get_deployment(session, name) if name else None
        running = _running(session, deployment.id) if deployment is not None else None
        if running is None:
            raise NotFound(f"no optimization run is running on {name or '(no deployment named)'}")
        run_id = running.id
    run = get_run(session, run_id=run_id)
    if run.state != RunState.RUNNING:
        raise Conflict(f"optimization run {run.id} already ended ({run.state.value}); nothing to cancel")
    pending = finish_run(session, run, RunState.CANCELLED, summary=f"cancelled by {actor}", actor=actor)
    return run, pending


def finish_run(session: Session, run: OptimizationRun, state: RunState, *, summary: str, error: str | None = None,
               actor: str = "optimizer") -> list[Measurement]:
    """End a run: open steps and measurements end with it, its trial replicas stop. Returns the measurements
    that were pending (the caller tells their agents to stop them)."""
    now = utcnow()
    run.state, run.summary, run.error = state, summary, error
    run.running_deployment_id, run.finished_at, run.updated_at = None, now, now
    step_state = StepState.CANCELLED if state == RunState.CANCELLED else StepState.FAILED
    pending: list[Measurement] = []
    for step in run.steps:
        if step.state in OPEN_STEP_STATES:
            step.state, step.finished_at = step_state, now
            step.reason = step.reason or f"run {state.value}: {error or summary}"
        for m in step.measurements:
            if m.state == MeasurementState.PENDING:
                m.state, m.finished_at = MeasurementState.CANCELLED, now
                m.error = f"run {state.value}"
                pending.append(m)
    stop_trial_replicas(session, run.id)
    session.flush()
    record_event(session, kind=f"optimize.{state.value}", deployment_name=run.deployment.name, actor=actor,
                 message=f"optimization run {run.id} of {run.deployment.name} {state.value}: {summary}",
                 details={"run": run.id, "result_revision": run.result_revision, "error": error})
    return pending


def stop_trial_replicas(session: Session, run_id: int, *, keep: tuple[int, ...] = ()) -> list[int]:
    """Mark the run's live trial replicas STOPPED (the reconciler then tells their agents); returns their ids."""
    rows = session.scalars(select(Replica.id).where(
        Replica.optimization_run_id == run_id, Replica.role == ReplicaRole.TRIAL,
        Replica.state != ReplicaState.STOPPED, Replica.id.not_in(keep or (-1,))))
    ids = list(rows)
    if ids:
        session.execute(update(Replica).where(Replica.id.in_(ids))
                        .values(state=ReplicaState.STOPPED, updated_at=utcnow()))
    return ids


def report(run: OptimizationRun) -> dict[str, Any]:
    """The whole trail as one JSON-ready dict (docs/optimizer.md describes it)."""
    return {
        "id": run.id, "deployment": run.deployment.name, "state": run.state.value, "goal": run.goal,
        "created_at": run.created_at.timestamp(),
        "finished_at": run.finished_at.timestamp() if run.finished_at else None,
        "summary": run.summary, "error": run.error, "options": run.options,
        "workload": run.options.get("workload"), "node": run.node_name, "gpu": run.gpu,
        "price_per_hour": run.price_per_hour, "bottleneck": run.bottleneck,
        "baseline_revision": run.baseline_revision, "result_revision": run.result_revision,
        "steps": [_step_dict(step) for step in run.steps],
    }


def _step_dict(step: OptimizationStep) -> dict[str, Any]:
    return {
        "number": step.number, "technique": step.technique, "state": step.state.value, "reason": step.reason,
        "change": step.change, "engine_config": step.engine_config, "metrics": step.metrics,
        "baseline_metrics": step.baseline_metrics, "gain": step.gain, "quality": step.quality,
        "started_at": step.started_at.timestamp() if step.started_at else None,
        "finished_at": step.finished_at.timestamp() if step.finished_at else None,
        "measurements": [{
            "id": m.id, "kind": m.kind, "arm": m.arm, "repeat": m.repeat, "state": m.state.value,
            "replica_id": m.replica_id, "wall_s": m.wall_s, "result": m.result, "error": m.error,
        } for m in step.measurements],
    }
