"""Every periodic job of the control plane, registered here so the whole schedule reads at a glance.

Jobs run one at a time on one thread, so no two passes ever race each other over the same rows. Each
runs every `every_s`, or sooner when woken (an agent reported a change, an operator deployed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.autoscaling.runner import AUTOSCALE_EVERY_S, AutoscaleJob
from llmctl.controlplane.db.models import utcnow
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import ControlPlaneError
from llmctl.controlplane.optimizer.runner import Optimizer
from llmctl.controlplane.reconciler import Reconciler
from llmctl.controlplane.services import quality as quality_service
from llmctl.controlplane.services import traffic as traffic_service

logger = logging.getLogger("llmctl.controlplane.jobs")

RECONCILE = "reconcile"
STALE_NODES = "stale-nodes"
QUALITY_PURGE = "quality-purge"
TRAFFIC_PURGE = "traffic-purge"
OPTIMIZE = "optimize"
AUTOSCALE = "autoscale"
OPTIMIZE_EVERY_S = 2.0
QUALITY_PURGE_EVERY_S = 600.0
TRAFFIC_PURGE_EVERY_S = 600.0


@dataclass(frozen=True)
class Job:
    name: str
    every_s: float
    run: Callable[[], None]


def control_plane_jobs(reconciler: Reconciler, *, reconcile_interval_s: float, node_timeout_s: float,
                       db: sessionmaker[Session] | None = None, quality_retention_s: float | None = None,
                       optimizer: Optimizer | None = None, traffic_retention_s: float | None = None,
                       autoscaler: AutoscaleJob | None = None) -> list[Job]:
    """The schedule. The stale-node check runs often enough that a dead node is noticed within about a
    fifth of node_timeout_s after its deadline passes. Stored quality samples older than the retention
    period are purged every QUALITY_PURGE_EVERY_S (or sooner for a shorter retention), recorded traffic
    likewise every TRAFFIC_PURGE_EVERY_S. The optimizer moves
    its runs forward every OPTIMIZE_EVERY_S, and at once when woken (a measurement came back, a run
    started); it runs on this thread, so it never races the reconciler over trial replicas. The autoscaler
    evaluates every AUTOSCALE_EVERY_S, on this thread too, so the count it sets and the reconciler's pass
    never interleave."""
    jobs = [
        Job(STALE_NODES, every_s=max(0.2, min(1.0, node_timeout_s / 5)), run=reconciler.check_stale_nodes),
        Job(RECONCILE, every_s=reconcile_interval_s, run=reconciler.reconcile),
    ]
    if optimizer is not None:
        jobs.append(Job(OPTIMIZE, every_s=OPTIMIZE_EVERY_S, run=optimizer.tick))
    if autoscaler is not None:
        jobs.append(Job(AUTOSCALE, every_s=AUTOSCALE_EVERY_S, run=autoscaler.tick))
    if db is not None and quality_retention_s is not None:
        retention = quality_retention_s
        jobs.append(Job(QUALITY_PURGE, every_s=min(QUALITY_PURGE_EVERY_S, max(0.2, retention / 4)),
                        run=lambda: purge_quality_samples(db, retention)))
    if db is not None and traffic_retention_s is not None:
        kept = traffic_retention_s
        jobs.append(Job(TRAFFIC_PURGE, every_s=min(TRAFFIC_PURGE_EVERY_S, max(0.2, kept / 4)),
                        run=lambda: purge_traffic_samples(db, kept)))
    return jobs


def purge_quality_samples(db: sessionmaker[Session], retention_s: float) -> int:
    """Delete the quality samples stored longer ago than the retention period."""
    with session_scope(db) as session:
        purged = quality_service.purge_expired(session, before=utcnow() - timedelta(seconds=retention_s))
    if purged:
        logger.info("purged %d quality sample(s) older than %gs", purged, retention_s)
    return purged


def purge_traffic_samples(db: sessionmaker[Session], retention_s: float) -> int:
    """Delete the traffic rows of requests that arrived longer ago than the retention period."""
    with session_scope(db) as session:
        purged = traffic_service.purge_expired(session, before=utcnow() - timedelta(seconds=retention_s))
    if purged:
        logger.info("purged %d traffic sample(s) older than %gs", purged, retention_s)
    return purged


class JobRunner:
    def __init__(self, jobs: list[Job]) -> None:
        names = [job.name for job in jobs]
        assert len(set(names)) == len(names), f"job names must be unique: {names}"
        self._jobs = jobs
        self._woken: set[str] = set()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: dict[str, str] = {}

    def start(self) -> None:
        assert self._thread is None, "the job runner is already running"
        self._thread = threading.Thread(target=self._loop, name="llmctl-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self, name: str) -> None:
        """Run job `name` as soon as the one running now (if any) finishes; wakes coalesce."""
        with self._lock:
            self._woken.add(name)
        self._wakeup.set()

    def _loop(self) -> None:
        due = {job.name: time.monotonic() for job in self._jobs}
        while not self._stopping.is_set():
            with self._lock:
                woken, self._woken = self._woken, set()
                self._wakeup.clear()
            for job in self._jobs:
                if self._stopping.is_set():
                    return
                if job.name in woken or time.monotonic() >= due[job.name]:
                    self._run(job)
                    due[job.name] = time.monotonic() + job.every_s
            self._wakeup.wait(max(0.0, min(due.values()) - time.monotonic()))

    def _run(self, job: Job) -> None:
        try:
            job.run()
        except ControlPlaneError as e:
            # Usually the database being away: say so once per distinct problem, then keep trying.
            if self._last_error.get(job.name) != e.message:
                logger.warning("job %s failed: %s (retrying every %gs)", job.name, e.message, job.every_s)
            self._last_error[job.name] = e.message
            return
        except Exception:
            logger.exception("job %s failed", job.name)
            return
        if self._last_error.pop(job.name, None) is not None:
            logger.info("job %s works again", job.name)
