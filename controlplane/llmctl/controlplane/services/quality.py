"""Quality sampling in SQL: a deployment's policy and reference, stored samples and their scores, and the
per-revision judgement with its events. The statistics live in controlplane/quality/judge.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import (
    Deployment,
    QualitySample,
    QualityState,
    Revision,
    RevisionQuality,
    SampleStatus,
    Tenant,
    utcnow,
)
from llmctl.controlplane.services import quality_fields
from llmctl.controlplane.services.deployments import get_deployment, get_revision
from llmctl.controlplane.services.events import record_event


def set_policy(session: Session, deployment: Deployment, *, sample_rate: float | None = None,
               auto_rollback: bool | None = None, threshold: float | None = None, actor: str = "admin") -> bool:
    """Change the deployment's sampling policy (only what is given); records an event when it changed."""
    changes: dict[str, list[Any]] = {}
    wanted = quality_fields(sample_rate=sample_rate, auto_rollback=auto_rollback, threshold=threshold)
    for field, value in wanted.items():
        if getattr(deployment, field) != value:
            changes[field.removeprefix("quality_")] = [getattr(deployment, field), value]
            setattr(deployment, field, value)
    if not changes:
        return False
    deployment.updated_at = utcnow()
    session.flush()
    said = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items())
    record_event(session, kind="deployment.quality_policy", deployment_name=deployment.name, actor=actor,
                 message=f"quality sampling of {deployment.name}: {said}", details={"changes": changes})
    return True


def reference_revision(deployment: Deployment) -> Revision | None:
    """The revision answers are judged against: the one set, else the first without weight quantization."""
    if deployment.quality_reference_revision is not None:
        return deployment.quality_reference_revision
    return next((r for r in deployment.revisions if not r.engine_config.get("quantization")), None)


def set_reference(session: Session, *, name: str, revision: int, actor: str = "admin") -> Revision:
    deployment = get_deployment(session, name, for_update=True)
    target = get_revision(session, name, revision)
    before = reference_revision(deployment)
    deployment.quality_reference_revision = target
    deployment.updated_at = utcnow()
    session.flush()
    record_event(session, kind="quality.reference", deployment_name=name, actor=actor,
                 message=f"quality reference of {name} is revision {target.number}"
                         + (f" (was {before.number})" if before is not None else ""),
                 details={"revision": target.number, "previous": before.number if before else None})
    return target


# ---- samples ----------------------------------------------------------------------------------------


def store_sample(session: Session, *, deployment_id: int, revision: int, tenant_id: int | None, kind: str,
                 request: dict[str, Any], answer: str) -> QualitySample | None:
    """A pending sample; None (nothing stored) when the tenant has opted out since the gateway checked."""
    if tenant_id is not None:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None or tenant.quality_opt_out:
            return None
    sample = QualitySample(deployment_id=deployment_id, revision=revision, tenant_id=tenant_id, kind=kind,
                           request=request, answer=answer, status=SampleStatus.PENDING, at=utcnow())
    session.add(sample)
    session.flush()
    return sample


@dataclass(frozen=True)
class Scores:
    answer_token_ids: list[int]
    mean_logprob: float
    top1: float
    baseline_mean_logprob: float
    baseline_top1: float


def save_scores(session: Session, sample_id: int, scores: Scores) -> QualitySample:
    sample = session.get(QualitySample, sample_id)
    assert sample is not None, f"quality sample {sample_id} vanished"
    sample.answer_token_ids = scores.answer_token_ids
    sample.mean_logprob, sample.top1 = scores.mean_logprob, scores.top1
    sample.baseline_mean_logprob, sample.baseline_top1 = scores.baseline_mean_logprob, scores.baseline_top1
    sample.status, sample.scored_at = SampleStatus.SCORED, utcnow()
    session.flush()
    return sample


def fail_sample(session: Session, sample_id: int, error: str) -> None:
    sample = session.get(QualitySample, sample_id)
    if sample is not None:
        sample.status, sample.error = SampleStatus.FAILED, error[:2000]
        count_dropped(session, deployment_id=sample.deployment_id, revision=sample.revision, count=1)


def count_dropped(session: Session, *, deployment_id: int, revision: int, count: int) -> None:
    _judgement(session, deployment_id, revision).dropped += count
    session.flush()


def scored(session: Session, *, deployment_id: int, revision: int | None = None, limit: int) -> list[QualitySample]:
    """The newest `limit` scored samples of one revision (or of every revision), oldest first."""
    query = select(QualitySample).where(QualitySample.deployment_id == deployment_id,
                                        QualitySample.status == SampleStatus.SCORED)
    if revision is not None:
        query = query.where(QualitySample.revision == revision)
    rows = list(session.scalars(query.order_by(QualitySample.id.desc()).limit(limit)))
    return rows[::-1]


def list_samples(session: Session, *, name: str, revision: int | None, limit: int = 100) -> list[QualitySample]:
    deployment = get_deployment(session, name)
    query = select(QualitySample).where(QualitySample.deployment_id == deployment.id)
    if revision is not None:
        query = query.where(QualitySample.revision == revision)
    return list(session.scalars(query.order_by(QualitySample.id.desc()).limit(limit)))


def purge_expired(session: Session, *, before: datetime) -> int:
    """Delete samples stored before `before` (the retention period); returns how many."""
    done = session.execute(delete(QualitySample).where(QualitySample.at < before))
    return done.rowcount or 0


# ---- judgement ----------------------------------------------------------------------------------------


def _judgement(session: Session, deployment_id: int, revision: int) -> RevisionQuality:
    row = session.scalar(select(RevisionQuality).where(RevisionQuality.deployment_id == deployment_id,
                                                       RevisionQuality.revision == revision))
    if row is None:
        row = RevisionQuality(deployment_id=deployment_id, revision=revision, state=QualityState.OK,
                              changed_at=utcnow(), dropped=0, details={})
        session.add(row)
        session.flush()
    return row


def judge_revision(session: Session, deployment: Deployment, revision: int, state: QualityState,
                   details: dict[str, Any], *, actor: str = "quality") -> bool:
    """Store the revision's judgement; a change of state is an event with its numbers. Returns whether
    the state changed."""
    row = _judgement(session, deployment.id, revision)
    row.details = details
    if row.state == state:
        session.flush()
        return False
    before, row.state, row.changed_at = row.state, state, utcnow()
    session.flush()
    record_event(session, kind=f"quality.{state.value}", deployment_name=deployment.name, actor=actor,
                 message=f"quality of {deployment.name} revision {revision}: {before.value} -> {state.value} "
                         f"({details.get('summary', '')})".replace(" ()", ""),
                 details={"revision": revision, "from": before.value, "to": state.value, **details})
    return True


def revision_states(session: Session, deployment_id: int) -> dict[int, RevisionQuality]:
    rows = session.scalars(select(RevisionQuality).where(RevisionQuality.deployment_id == deployment_id))
    return {row.revision: row for row in rows}


@dataclass(frozen=True)
class RevisionSummary:
    revision: int
    samples: int
    """Scored samples."""
    pending: int
    dropped: int
    state: QualityState
    mean_logprob: tuple[float, float, float] | None
    """(mean, low, high): a 95% t-interval over the scored samples."""
    top1: tuple[float, float, float] | None
    baseline_mean_logprob: tuple[float, float, float] | None
    baseline_top1: tuple[float, float, float] | None
    details: dict[str, Any]


def summaries(session: Session, *, name: str) -> tuple[Deployment, list[RevisionSummary]]:
    """Per revision that has samples or a judgement: counts, both scores with 95% intervals, the state."""
    deployment = get_deployment(session, name)
    states = revision_states(session, deployment.id)
    counts = dict(session.execute(
        select(QualitySample.revision, func.count()).where(QualitySample.deployment_id == deployment.id,
                                                           QualitySample.status == SampleStatus.PENDING)
        .group_by(QualitySample.revision)).all())
    columns = (QualitySample.mean_logprob, QualitySample.top1, QualitySample.baseline_mean_logprob,
               QualitySample.baseline_top1)
    values: dict[int, list[tuple[float, ...]]] = {}
    for revision, *scores in session.execute(
        select(QualitySample.revision, *columns).where(QualitySample.deployment_id == deployment.id,
                                                       QualitySample.status == SampleStatus.SCORED)
    ):
        values.setdefault(revision, []).append(tuple(scores))
    out = []
    for revision in sorted(set(values) | set(states) | set(counts)):
        rows, judged = values.get(revision, []), states.get(revision)
        out.append(RevisionSummary(
            revision=revision, samples=len(rows), pending=counts.get(revision, 0),
            dropped=judged.dropped if judged else 0, state=judged.state if judged else QualityState.OK,
            mean_logprob=interval([r[0] for r in rows]), top1=interval([r[1] for r in rows]),
            baseline_mean_logprob=interval([r[2] for r in rows]), baseline_top1=interval([r[3] for r in rows]),
            details=judged.details if judged else {},
        ))
    return deployment, out


def interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high) of a t-interval for the mean; None without values."""
    if not values:
        return None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    from scipy import stats

    sem = stats.sem(values)
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)

