"""The quality worker against a real scorer (`llmctl serve`'s app on a tiny Llama under uvicorn) and a real
database: the reference scores its own answers as exactly its baseline, a dead or missing scorer costs the
sample and a counter, a degraded revision is rolled back to the last good one when the deployment asks."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import QualitySample, QualityState, ReplicaRole, ReplicaState, SampleStatus
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.gateway.sampling import QualitySampler, SampledAnswer, SamplingTable
from llmctl.controlplane.quality.judge import JudgePolicy
from llmctl.controlplane.quality.worker import QualityWorker
from llmctl.controlplane.services import deployments, quality
from llmctl.controlplane.services.events import list_events
from llmctl.controlplane.services.replicas import create_replica, update_replica
from tests.factories import make_tiny_llama, serve_app

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

MESSAGES = [{"role": "user", "content": "Hello world!"}]


@pytest.fixture(scope="module")
def scorer_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The reference's replica: a tiny Llama served as deployment "chat"."""
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    path: Path = make_tiny_llama(tmp_path_factory.mktemp("tiny-scorer"), max_position_embeddings=512)
    config = EngineConfig(model=str(path), dtype="float32", max_model_len=512, num_kv_blocks=256)
    with serve_app(build_app(AsyncEngine.from_config(config), "chat")) as url:
        yield url


def worker_for(db: sessionmaker[Session], **kwargs) -> QualityWorker:
    sampler = QualitySampler(SamplingTable(), queue.Queue(8), registry=CollectorRegistry())
    return QualityWorker(db, sampler, registry=CollectorRegistry(), **kwargs)


def deploy_with_scorer(db: sessionmaker[Session], url: str | None) -> None:
    """Deployment "chat" at revision 1 (float, the reference), with a READY scorer replica at `url`."""
    with session_scope(db) as session:
        deployment, revision, _ = deployments.deploy(session, name="chat", model="tiny", engine_config={})
        if url is not None:
            scorer = create_replica(session, deployment=deployment, revision=revision, node=None,
                                    role=ReplicaRole.SCORE)
            update_replica(session, scorer.id, state=ReplicaState.READY.value, url=url)


def served_answer(url: str, **params) -> str:
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 12, **params}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]


def only_sample(db: sessionmaker[Session]) -> QualitySample:
    with session_scope(db) as session:
        (sample,) = quality.list_samples(session, name="chat", revision=None)
        session.expunge(sample)
        return sample


def test_the_reference_scores_its_own_greedy_answer_exactly_as_its_baseline(db_factory, scorer_url):
    deploy_with_scorer(db_factory, scorer_url)
    request = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    worker = worker_for(db_factory)
    worker.process(SampledAnswer("chat", 1, None, "chat", request, served_answer(scorer_url, temperature=0)))
    sample = only_sample(db_factory)
    assert sample.status == SampleStatus.SCORED and sample.answer_token_ids
    assert sample.mean_logprob == pytest.approx(sample.baseline_mean_logprob, abs=1e-4)
    # The same answer text, re-tokenized and scored the same way (a random tiny model's greedy ids are often
    # not the canonical tokenization of its text, so top-1 agreement is below 1 here; SmolLM2's is 1.0).
    assert sample.top1 == pytest.approx(sample.baseline_top1)
    assert sample.mean_logprob < 0
    assert worker.scored.labels("chat")._value.get() == 1


@pytest.mark.parametrize("scorer", ["dead", "missing"])
def test_a_dead_or_missing_scorer_costs_the_sample_and_is_counted(db_factory, scorer):
    deploy_with_scorer(db_factory, "http://127.0.0.1:9" if scorer == "dead" else None)
    worker = worker_for(db_factory)
    worker.process(SampledAnswer("chat", 1, None, "chat", {"messages": MESSAGES}, "Hi!"))
    sample = only_sample(db_factory)
    assert sample.status == SampleStatus.FAILED
    assert ("unreachable" if scorer == "dead" else "no scorer replica") in sample.error
    with session_scope(db_factory) as session:
        _, (summary,) = quality.summaries(session, name="chat")
        assert (summary.samples, summary.dropped) == (0, 1)
    assert worker.sampler.dropped.labels("chat", "scorer")._value.get() == 1


def test_a_degraded_revision_is_rolled_back_to_the_last_good_one(db_factory, scorer_url):
    deploy_with_scorer(db_factory, scorer_url)
    rolled_back = []
    worker = worker_for(db_factory, on_rollback=lambda: rolled_back.append(True),
                        policy=JudgePolicy(min_samples=5))
    with session_scope(db_factory) as session:
        deployment = deployments.get_deployment(session, "chat")
        quality.set_policy(session, deployment, auto_rollback=True)
        quality.judge_revision(session, deployment, 1, QualityState.OK, {})
        deployments.deploy(session, name="chat", model="tiny", engine_config={"quantization": "rtn4"})
        for _ in range(20):  # revision 2's answers, a full nat per token below the reference's own
            sample = quality.store_sample(session, deployment_id=deployment.id, revision=2, tenant_id=None,
                                          kind="chat", request={"messages": MESSAGES}, answer="x")
            quality.save_scores(session, sample.id, quality.Scores([1], -2.0, 0.5, -1.0, 1.0))
    request = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    worker.process(SampledAnswer("chat", 2, None, "chat", request, "Paged blocks jump over caches"))
    assert rolled_back == [True]
    with session_scope(db_factory) as session:
        assert deployments.get_deployment(session, "chat").current_revision.number == 1
        kinds = {e.kind: e for e in list_events(session)}
        assert kinds["quality.degraded"].details["revision"] == 2
        reason = kinds["deployment.rolled_back"].details["reason"]
        assert reason.startswith("quality auto-rollback: revision 2 is degraded (median change over 21 samples")
    assert worker.degraded.labels("chat")._value.get() == 0
    assert worker.state.labels("chat", "2")._value.get() == 2
