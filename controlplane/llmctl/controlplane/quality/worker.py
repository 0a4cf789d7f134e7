"""The quality worker: one thread that takes sampled answers off the gateway's bounded queue, stores each,
has the deployment's scorer replica score it, judges the revision and acts on the judgement.

It owns its pace: while it scores, the gateway keeps queueing, and once the queue is full new samples are
dropped and counted (gateway/sampling.py). A scorer that is missing, dead or failing costs the sample
(stored as failed, counted as dropped), never the gateway's time.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import Deployment, QualityState, Replica, ReplicaRole, ReplicaState
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import ControlPlaneError
from llmctl.controlplane.gateway.sampling import QualitySampler, SampledAnswer
from llmctl.controlplane.quality.judge import JudgePolicy, ScoredPair, judge
from llmctl.controlplane.quality.scorer import Scorer, ScoringError
from llmctl.controlplane.services import deployments as deployments_service
from llmctl.controlplane.services import quality as quality_service

logger = logging.getLogger("llmctl.controlplane.quality")

QUEUE_SIZE = 64
"""Sampled answers waiting for the worker; beyond this they are dropped (and counted)."""
SCORER_TIMEOUT_S = 120.0
STATE_VALUES = {QualityState.OK: 0, QualityState.WATCH: 1, QualityState.DEGRADED: 2}


class QualityWorker:
    def __init__(self, db: sessionmaker[Session], sampler: QualitySampler, *, policy: JudgePolicy = JudgePolicy(),
                 on_rollback: Callable[[], None] = lambda: None, registry: CollectorRegistry | None = None,
                 client: httpx.Client | None = None) -> None:
        self.db, self.sampler, self.policy, self.on_rollback = db, sampler, policy, on_rollback
        self.client = client or httpx.Client(timeout=SCORER_TIMEOUT_S, trust_env=False)
        kwargs = {"registry": registry} if registry is not None else {}
        self.state = Gauge("llmctl_quality_state", "Quality judgement of a revision: 0 ok, 1 watch, 2 degraded",
                           ["deployment", "revision"], **kwargs)
        self.degraded = Gauge("llmctl_quality_degraded", "1 while the deployment's current revision is degraded",
                              ["deployment"], **kwargs)
        self.scored = Counter("llmctl_quality_samples_scored_total", "Sampled answers scored against the reference",
                              ["deployment"], **kwargs)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        assert self._thread is None, "the quality worker is already running"
        self._thread = threading.Thread(target=self._loop, name="llmctl-quality", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()

    def _loop(self) -> None:
        # The judge's Wilcoxon test needs scipy.stats (74 MiB resident): load it now, in this thread, so that the
        # server's memory is flat from start-up on rather than jumping at the first verdict (benchmarks/load.sh).
        import scipy.stats  # noqa: F401

        while not self._stopping.is_set():
            try:
                item = self.sampler.sink.get(timeout=0.5)
            except queue.Empty:
                item = None
            try:
                self.record_drops()
                if item is not None:
                    self.process(item)
            except ControlPlaneError as e:  # usually the database being away; the sample is lost
                logger.warning("quality sample of %s lost: %s", item.deployment if item else "-", e.message)
            except Exception:
                logger.exception("quality worker failed on a sample")

    def record_drops(self) -> None:
        drops = self.sampler.take_unrecorded_drops()
        if not drops:
            return
        with session_scope(self.db) as session:
            for (name, revision), count in drops.items():
                deployment = _deployment(session, name)
                if deployment is not None:
                    quality_service.count_dropped(session, deployment_id=deployment.id, revision=revision,
                                                  count=count)

    def process(self, item: SampledAnswer) -> None:
        """Store, score, judge one sampled answer (the scorer is asked outside any transaction)."""
        with session_scope(self.db) as session:
            deployment = _deployment(session, item.deployment)
            if deployment is None:
                return
            sample = quality_service.store_sample(
                session, deployment_id=deployment.id, revision=item.revision, tenant_id=item.tenant_id,
                kind=item.kind, request=item.request, answer=item.answer)
            if sample is None:
                return  # the tenant opted out meanwhile
            sample_id, url = sample.id, _scorer_url(session, deployment)
        if url is None:
            self._fail(sample_id, item, "no scorer replica of the quality reference is ready")
            return
        try:
            scores = Scorer(self.client, url, item.deployment).score_sample(item.kind, item.request, item.answer)
        except ScoringError as e:
            self._fail(sample_id, item, str(e))
            return
        rolled_back = False
        with session_scope(self.db) as session:
            quality_service.save_scores(session, sample_id, scores)
            deployment = _deployment(session, item.deployment)
            if deployment is not None:
                rolled_back = self._judge(session, deployment, item.revision)
        self.scored.labels(item.deployment).inc()
        if rolled_back:
            self.on_rollback()

    def _fail(self, sample_id: int, item: SampledAnswer, error: str) -> None:
        logger.warning("quality sample of %s revision %d not scored: %s", item.deployment, item.revision, error)
        self.sampler.dropped.labels(item.deployment, "scorer").inc()
        with session_scope(self.db) as session:
            quality_service.fail_sample(session, sample_id, error)

    def _judge(self, session: Session, deployment: Deployment, revision: int) -> bool:
        """Judge `revision` on its latest pairs; returns whether that rolled the deployment back."""
        rows = quality_service.scored(session, deployment_id=deployment.id, revision=revision,
                                      limit=self.policy.window)
        pairs = [ScoredPair(r.mean_logprob, r.top1, r.baseline_mean_logprob, r.baseline_top1) for r in rows]
        verdict = judge(pairs, deployment.quality_threshold, self.policy)
        changed = quality_service.judge_revision(session, deployment, revision, verdict.state,
                                                 verdict.details(deployment.quality_threshold))
        self.state.labels(deployment.name, str(revision)).set(STATE_VALUES[verdict.state])
        current = deployment.current_revision
        if current is not None and current.number == revision:
            self.degraded.labels(deployment.name).set(verdict.state == QualityState.DEGRADED)
        if not (changed and verdict.state == QualityState.DEGRADED and deployment.quality_auto_rollback
                and current is not None and current.number == revision):
            return False
        target = _last_good_revision(session, deployment, revision)
        if target is None:
            logger.warning("%s revision %d is degraded but no earlier revision was judged ok: not rolled back",
                           deployment.name, revision)
            return False
        deployments_service.rollback(
            session, name=deployment.name, to_revision=target, actor="quality",
            reason=f"quality auto-rollback: revision {revision} is degraded "
                   f"({verdict.details(deployment.quality_threshold)['summary']})")
        self.degraded.labels(deployment.name).set(0)
        return True


def _deployment(session: Session, name: str) -> Deployment | None:
    return session.scalar(select(Deployment).where(Deployment.name == name))


def _scorer_url(session: Session, deployment: Deployment) -> str | None:
    return session.scalar(select(Replica.url).where(
        Replica.deployment_id == deployment.id, Replica.role == ReplicaRole.SCORE,
        Replica.state == ReplicaState.READY, Replica.url.is_not(None)).order_by(Replica.id.desc()).limit(1))


def _last_good_revision(session: Session, deployment: Deployment, degraded: int) -> int | None:
    """The newest revision before `degraded` that was judged ok, or the quality reference itself."""
    states = quality_service.revision_states(session, deployment.id)
    reference = quality_service.reference_revision(deployment)
    good = [n for n, row in states.items() if n < degraded and row.state == QualityState.OK]
    if reference is not None and reference.number < degraded:
        good.append(reference.number)
    return max(good, default=None)
