"""Quality sampling in SQL on SQLite and PostgreSQL: policy and reference, samples, opt-out, retention, judgement."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import QualitySample, QualityState, RevisionQuality, SampleStatus, utcnow
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.jobs import purge_quality_samples
from llmctl.controlplane.services import deployments, quality, tenants
from llmctl.controlplane.services.events import list_events

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0}


def deploy(session: Session, **config) -> int:
    deployment, revision, _ = deployments.deploy(session, name="chat", model="tiny", engine_config=config)
    return revision.number


def store(session: Session, tenant_id: int | None, revision: int = 1, answer: str = "Hello!") -> QualitySample | None:
    deployment = deployments.get_deployment(session, "chat")
    return quality.store_sample(session, deployment_id=deployment.id, revision=revision, tenant_id=tenant_id,
                                kind="chat", request=CHAT, answer=answer)


def test_the_reference_is_the_first_unquantized_revision_unless_set(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session, quantization="int8")
        deployment = deployments.get_deployment(session, "chat")
        assert quality.reference_revision(deployment) is None  # nothing to judge against yet
        deploy(session)
        deploy(session, quantization="rtn4")
        assert quality.reference_revision(deployment).number == 2
        quality.set_reference(session, name="chat", revision=3)
        assert quality.reference_revision(deployment).number == 3
        with pytest.raises(NotFound):
            quality.set_reference(session, name="chat", revision=9)
        events = [e for e in list_events(session) if e.kind == "quality.reference"]
        assert events[-1].message == "quality reference of chat is revision 3 (was 2)"


def test_policy_changes_are_checked_and_recorded(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session)
        deployment = deployments.get_deployment(session, "chat")
        assert (deployment.quality_sample_rate, deployment.quality_auto_rollback) == (0.01, False)
        assert quality.set_policy(session, deployment, sample_rate=1.0, auto_rollback=True) is True
        assert quality.set_policy(session, deployment, sample_rate=1.0) is False  # nothing changed
        for bad in ({"sample_rate": 1.5}, {"sample_rate": -0.1}, {"threshold": 0.0}, {"sample_rate": True}):
            with pytest.raises(InvalidArgument):
                quality.set_policy(session, deployment, **bad)
        event = [e for e in list_events(session) if e.kind == "deployment.quality_policy"][-1]
        assert event.details["changes"] == {"sample_rate": [0.01, 1.0], "auto_rollback": [False, True]}


def test_an_opted_out_tenant_is_never_stored_and_opting_out_deletes_its_samples(
    db_factory: sessionmaker[Session],
) -> None:
    with session_scope(db_factory) as session:
        deploy(session)
        acme, _ = tenants.create_tenant(session, name="acme")
        private, _ = tenants.create_tenant(session, name="private", quality_opt_out=True)
        assert store(session, acme.id) is not None and store(session, acme.id) is not None
        assert store(session, private.id) is None
        tenants.set_quality_opt_out(session, name="acme", opt_out=True)
        assert session.scalar(select(func.count()).select_from(QualitySample)) == 0
        event = [e for e in list_events(session) if e.kind == "tenant.quality_opt_out"][-1]
        assert event.details["deleted_samples"] == 2
        assert store(session, acme.id) is None


def test_expired_samples_are_purged_by_the_job_and_recent_ones_kept(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session)
        old, recent = store(session, None), store(session, None)
        old.at = utcnow() - timedelta(days=8)
        recent_id = recent.id
    assert purge_quality_samples(db_factory, retention_s=7 * 24 * 3600) == 1
    assert purge_quality_samples(db_factory, retention_s=7 * 24 * 3600) == 0
    with session_scope(db_factory) as session:
        assert [s.id for s in session.scalars(select(QualitySample))] == [recent_id]


def test_scores_drops_and_judgements_add_up_per_revision(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session)
        deploy(session, quantization="int8")
        deployment = deployments.get_deployment(session, "chat")
        for i, revision in enumerate([1, 1, 2, 2, 2]):
            sample = store(session, None, revision=revision)
            quality.save_scores(session, sample.id, quality.Scores([1, 2], -0.5 - 0.1 * i, 0.9, -0.5, 1.0))
        pending = store(session, None, revision=2)
        failed = store(session, None, revision=2)
        quality.fail_sample(session, failed.id, "scorer at http://x answered 500")
        quality.count_dropped(session, deployment_id=deployment.id, revision=2, count=3)
        assert quality.judge_revision(session, deployment, 2, QualityState.WATCH, {"summary": "s"}) is True
        assert quality.judge_revision(session, deployment, 2, QualityState.WATCH, {"summary": "s"}) is False
        _, summaries = quality.summaries(session, name="chat")
        one, two = summaries
        assert (one.revision, one.samples, one.pending, one.dropped, one.state) == (1, 2, 0, 0, QualityState.OK)
        assert (two.samples, two.pending, two.dropped, two.state) == (3, 1, 4, QualityState.WATCH)
        mean, low, high = two.mean_logprob
        assert mean == pytest.approx(-0.8) and low < mean < high
        assert two.baseline_mean_logprob == (-0.5, -0.5, -0.5)
        assert [s.status for s in quality.list_samples(session, name="chat", revision=2)][:2] == [
            SampleStatus.FAILED, SampleStatus.PENDING]
        assert pending.status == SampleStatus.PENDING
        events = [e for e in list_events(session) if e.kind.startswith("quality.")]
        assert [(e.kind, e.details["revision"]) for e in events] == [("quality.watch", 2)]


def test_deleting_a_deployment_deletes_its_samples_and_judgements(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session)
        quality.set_reference(session, name="chat", revision=1)
        store(session, None)
        quality.count_dropped(session, deployment_id=deployments.get_deployment(session, "chat").id, revision=1,
                              count=1)
    with session_scope(db_factory) as session:
        deployments.delete_deployment(session, name="chat")
    with session_scope(db_factory) as session:
        assert session.scalar(select(func.count()).select_from(QualitySample)) == 0
        assert session.scalar(select(func.count()).select_from(RevisionQuality)) == 0
