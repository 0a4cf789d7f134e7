"""Deployments and their immutable, numbered revisions: deploy, rollback, scale, delete.

One writer per deployment: every change bumps Deployment.version (the ORM's optimistic lock), so a
call working from a copy another call has since changed fails with Conflict instead of overwriting it.
On PostgreSQL the row is also read FOR UPDATE, so writers that have not read it yet queue instead.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.controlplane.db.models import AutoscaleMode, Deployment, Revision, utcnow
from llmctl.controlplane.errors import Conflict, InvalidArgument, NotFound
from llmctl.controlplane.services import check_count, check_name, locks_rows
from llmctl.controlplane.services.events import record_event

MAX_REPLICAS = 64
_FIELD_TYPES = typing.get_type_hints(EngineConfig)
# Unique constraints a concurrent writer can trip (PostgreSQL names them; SQLite lists the columns).
_RACE_CONSTRAINTS = (
    "uq_revisions_deployment_id_number",
    "revisions.deployment_id, revisions.number",
    "uq_deployments_name",
    "deployments.name",
)


def deploy(
    session: Session,
    *,
    name: str,
    model: str,
    engine_config: dict[str, Any],
    replicas: int | None = None,
    quality: dict[str, Any] | None = None,
    actor: str = "admin",
    reason: str = "deploy",
) -> tuple[Deployment, Revision, bool]:
    """Create or update a deployment, like `kubectl apply`; the bool says whether a revision was made.

    Deploying the model and config the current revision already has makes no revision; `replicas`
    (default 1 for a new deployment, unchanged otherwise) still applies. `quality` (the columns from
    services.quality_fields) is the policy a new deployment starts with; an existing deployment's policy
    changes through services.quality.set_policy.
    """
    check_name("deployment", name)
    if replicas is not None:
        check_count("replicas", replicas, 0, MAX_REPLICAS)
    config = validated_engine_config(model, engine_config)
    with _one_writer(name):
        deployment = _find(session, name, for_update=True)
        if deployment is None:
            return _create(session, name, model, config, replicas, quality or {}, actor, reason)
        current = deployment.current_revision
        assert current is not None, f"deployment {name!r} has no current revision"
        revision, created = current, False
        if current.model != model or _comparable(current.engine_config) != config:
            number = _last_number(session, deployment) + 1
            revision = _new_revision(deployment, number, model, config, actor, reason)
            deployment.current_revision = revision
            deployment.model = model
            deployment.updated_at = utcnow()
            session.flush()
            created = True
            record_event(
                session,
                kind="deployment.deployed",
                message=f"deployed revision {number} of {name} ({model}): {reason}",
                deployment_name=name,
                actor=actor,
                details={
                    "revision": number,
                    "previous_revision": current.number,
                    "reason": reason,
                    "changes": [
                        list(change) for change in config_diff(_comparable(current.engine_config), config)
                    ],
                },
            )
        if replicas is not None and replicas != deployment.desired_replicas:
            _refuse_if_autoscaled(deployment, replicas)
            set_replicas(session, deployment, replicas, actor)
        return deployment, revision, created


def _create(
    session: Session,
    name: str,
    model: str,
    config: dict[str, Any],
    replicas: int | None,
    quality: dict[str, Any],
    actor: str,
    reason: str,
) -> tuple[Deployment, Revision, bool]:
    now = utcnow()
    deployment = Deployment(
        name=name,
        model=model,
        desired_replicas=1 if replicas is None else replicas,
        created_at=now,
        updated_at=now,
        **quality,
    )
    session.add(deployment)
    revision = _new_revision(deployment, 1, model, config, actor, reason)
    deployment.current_revision = revision
    session.flush()
    record_event(
        session,
        kind="deployment.deployed",
        message=f"created {name} at revision 1 ({model}) with {deployment.desired_replicas} replica(s)",
        deployment_name=name,
        actor=actor,
        details={
            "revision": 1,
            "previous_revision": None,
            "reason": reason,
            "replicas": deployment.desired_replicas,
            "quality": {k.removeprefix("quality_"): v for k, v in quality.items()},
        },
    )
    return deployment, revision, True


def _new_revision(
    deployment: Deployment, number: int, model: str, config: dict[str, Any], actor: str, reason: str
) -> Revision:
    revision = Revision(
        number=number, model=model, engine_config=config, created_by=actor, reason=reason, created_at=utcnow()
    )
    deployment.revisions.append(revision)
    return revision


def rollback(
    session: Session,
    *,
    name: str,
    to_revision: int | None = None,
    actor: str = "admin",
    reason: str | None = None,
) -> Revision:
    """Point the deployment back at an existing revision (default: the one numbered just below the current).

    No revision is created; the event records from, to and why.
    """
    with _one_writer(name):
        deployment = get_deployment(session, name, for_update=True)
        current = deployment.current_revision
        assert current is not None, f"deployment {name!r} has no current revision"
        if to_revision is None:
            if current.number <= 1:
                raise InvalidArgument(
                    f"deployment {name!r} is at revision {current.number}; there is no earlier revision "
                    "to roll back to"
                )
            to_revision = current.number - 1
        check_count("to_revision", to_revision, 1)
        if to_revision == current.number:
            raise InvalidArgument(f"deployment {name!r} is already at revision {to_revision}")
        target = _revision(session, deployment, to_revision)
        reason = reason or f"rollback to {target.number}"
        deployment.current_revision = target
        deployment.model = target.model
        deployment.updated_at = utcnow()
        session.flush()
        record_event(
            session,
            kind="deployment.rolled_back",
            message=f"rolled {name} back from revision {current.number} to {target.number}: {reason}",
            deployment_name=name,
            actor=actor,
            details={"from": current.number, "to": target.number, "reason": reason},
        )
        return target


def scale(session: Session, *, name: str, replicas: int, actor: str = "admin") -> Deployment:
    check_count("replicas", replicas, 0, MAX_REPLICAS)
    with _one_writer(name):
        deployment = get_deployment(session, name, for_update=True)
        if replicas != deployment.desired_replicas:
            _refuse_if_autoscaled(deployment, replicas)
            set_replicas(session, deployment, replicas, actor)
        return deployment


def _refuse_if_autoscaled(deployment: Deployment, replicas: int) -> None:
    """One writer: while autoscaling is on, only the autoscaler sets the replica count (advisory mode only
    watches, so a manual count stands)."""
    policy = deployment.autoscaling
    if policy is not None and policy.mode == AutoscaleMode.ON:
        raise Conflict(
            f"deployment {deployment.name!r} is autoscaled between {policy.min_replicas} and {policy.max_replicas} "
            f"replicas, so it is not scaled by hand to {replicas}: change the bounds with `llmctl autoscale "
            f"{deployment.name} --min N --max M`, or hand the count back with `llmctl autoscale {deployment.name} "
            "--off` (or --advisory)"
        )


def set_replicas(session: Session, deployment: Deployment, replicas: int, actor: str) -> None:
    """Set desired_replicas and record the event (the caller holds the deployment for update)."""
    before = deployment.desired_replicas
    deployment.desired_replicas = replicas
    deployment.updated_at = utcnow()
    session.flush()
    record_event(
        session,
        kind="deployment.scaled",
        message=f"scaled {deployment.name} from {before} to {replicas} replica(s)",
        deployment_name=deployment.name,
        actor=actor,
        details={"from": before, "to": replicas},
    )


def set_semantic_cache(session: Session, *, name: str, threshold: float | None,
                       actor: str = "admin") -> Deployment:
    """Turn the gateway's semantic cache on at `threshold` (a cosine similarity in (0, 1]) or, with None,
    off. The gateway learns it at the next reconcile pass; its entries are answers the exact cache holds,
    so turning it off drops nothing but the index."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                  or not 0 < threshold <= 1):
        raise InvalidArgument(f"semantic cache threshold must be a cosine similarity in (0, 1], got {threshold!r}")
    with _one_writer(name):
        deployment = get_deployment(session, name, for_update=True)
        before = deployment.semantic_cache_threshold
        if before == threshold:
            return deployment
        deployment.semantic_cache_threshold = None if threshold is None else float(threshold)
        deployment.updated_at = utcnow()
        session.flush()
        record_event(
            session,
            kind="deployment.semantic_cache",
            message=f"{name}: semantic cache " + (f"on at similarity {threshold:g}" if threshold is not None
                                                  else "off"),
            deployment_name=name,
            actor=actor,
            details={"from": before, "to": threshold},
        )
        return deployment


def delete_deployment(session: Session, *, name: str, actor: str = "admin") -> None:
    """Delete a deployment with its revisions and replica records; its events and usage stay."""
    with _one_writer(name):
        deployment = get_deployment(session, name, for_update=True)
        revisions = len(deployment.revisions)
        session.delete(deployment)
        session.flush()
        record_event(
            session,
            kind="deployment.deleted",
            message=f"deleted {name} and its {revisions} revision(s)",
            deployment_name=name,
            actor=actor,
            details={"revisions": revisions},
        )


def get_deployment(session: Session, name: str, *, for_update: bool = False) -> Deployment:
    deployment = _find(session, name, for_update=for_update)
    if deployment is None:
        known = list(session.scalars(select(Deployment.name).order_by(Deployment.name).limit(21)))
        if not known:
            raise NotFound(f"deployment {name!r} not found; there are no deployments yet")
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise NotFound(f"deployment {name!r} not found; known deployments: {shown}")
    return deployment


def list_deployments(session: Session) -> list[Deployment]:
    return list(session.scalars(select(Deployment).order_by(Deployment.name)))


def list_revisions(session: Session, name: str) -> list[Revision]:
    """All revisions of a deployment, oldest first."""
    deployment = get_deployment(session, name)
    return list(
        session.scalars(
            select(Revision).where(Revision.deployment_id == deployment.id).order_by(Revision.number)
        )
    )


def get_revision(session: Session, name: str, number: int) -> Revision:
    return _revision(session, get_deployment(session, name), number)


def _last_number(session: Session, deployment: Deployment) -> int:
    return (
        session.scalar(select(func.max(Revision.number)).where(Revision.deployment_id == deployment.id)) or 0
    )


def _revision(session: Session, deployment: Deployment, number: int) -> Revision:
    revision = session.scalars(
        select(Revision).where(Revision.deployment_id == deployment.id, Revision.number == number)
    ).one_or_none()
    if revision is None:
        last = _last_number(session, deployment)
        raise NotFound(
            f"deployment {deployment.name!r} has no revision {number}; it has revisions 1 to {last}"
        )
    return revision


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key whose value differs, sorted by key; absent reads as None."""
    return [
        (key, old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def validated_engine_config(model: str, engine_config: dict[str, Any]) -> dict[str, Any]:
    """The full EngineConfig.to_dict() for `model` with these overrides; InvalidArgument names a bad field."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgument("model must be a model name, folder or hub id, got an empty value")
    if not isinstance(engine_config, dict):
        raise InvalidArgument(
            f"engine config must be a mapping of field to value, got {type(engine_config).__name__}"
        )
    if engine_config.get("model", model) != model:
        raise InvalidArgument(
            f"engine config names model {engine_config['model']!r} but the deployment's model is {model!r}"
        )
    for key, value in engine_config.items():
        if key in _FIELD_TYPES and not _has_type(value, _FIELD_TYPES[key]):
            raise InvalidArgument(
                f"invalid engine config: {key} must be {_type_name(_FIELD_TYPES[key])}, got {value!r}"
            )
    try:
        config = EngineConfig.from_dict({**engine_config, "model": model})
    except InvalidRequest as e:
        raise InvalidArgument(f"invalid engine config: {e}") from e
    return config.to_dict()


def _has_type(value: Any, hint: Any) -> bool:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if not all(isinstance(kind, type) for kind in allowed):
        return True  # a richer annotation: EngineConfig's own checks decide
    # bool is an int subclass, but `max_num_seqs: true` is a mistake, not 1.
    return any(
        value is None
        if kind is type(None)
        else isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        for kind in allowed
    )


def _type_name(hint: Any) -> str:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join(
        "null" if kind is type(None) else getattr(kind, "__name__", str(kind)) for kind in allowed
    )


def _comparable(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config as today's EngineConfig spells it, so a field added since (with its default) is
    not mistaken for a change; a config today's code rejects is compared as stored."""
    try:
        return EngineConfig.from_dict(stored).to_dict()
    except (InvalidRequest, TypeError):
        return stored


def exists(session: Session, name: str) -> bool:
    return session.scalar(select(Deployment.id).where(Deployment.name == name)) is not None


def _find(session: Session, name: str, *, for_update: bool = False) -> Deployment | None:
    query = select(Deployment).where(Deployment.name == name)
    if for_update and locks_rows(session):
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


@contextmanager
def _one_writer(name: str) -> Iterator[None]:
    """Turn a lost race with another writer of the same deployment into Conflict."""
    try:
        yield
    except StaleDataError as e:
        raise _conflict(name) from e
    except IntegrityError as e:
        if any(constraint in str(e.orig) for constraint in _RACE_CONSTRAINTS):
            raise _conflict(name) from e
        raise


def _conflict(name: str) -> Conflict:
    return Conflict(f"deployment {name!r} was changed by another call at the same time; re-read and retry")
