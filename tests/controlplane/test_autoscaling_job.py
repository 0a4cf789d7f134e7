"""The autoscaler job over real SQL (SQLite and PostgreSQL) and the control plane's in-memory fleet: signals from
replica telemetry, decisions stored and applied (or only recorded in advisory mode), the one-writer rule."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.autoscaling.policy import AutoscalePolicy, Mode
from llmctl.controlplane.autoscaling.runner import AutoscaleJob
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import Conflict, InvalidArgument
from llmctl.controlplane.fleet import Fleet
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.services import autoscaling as service
from llmctl.controlplane.services.deployments import deploy, get_deployment, scale
from llmctl.controlplane.services.events import list_events
from llmctl.controlplane.services.nodes import get_node
from llmctl.controlplane.services.replicas import create_replica, update_replica
from tests.controlplane.test_store_nodes import register

NOW_POLICY = dict(min_replicas=1, max_replicas=6, target_queue=4, target_kv_usage=None, scale_up_window_s=0,
                  scale_down_window_s=0, max_step=4)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def serving(db: sessionmaker[Session], count: int) -> list[int]:
    """A deployment `chat` with `count` READY replicas on a healthy node; their ids."""
    with session_scope(db) as session:
        register(session, "gpu-a")
        deployment, revision, _ = deploy(session, name="chat", model="smollm2-135m", engine_config={},
                                         replicas=count)
        ids = [create_replica(session, deployment=deployment, revision=revision,
                              node=get_node(session, "gpu-a")).id for _ in range(count)]
    with session_scope(db) as session:
        for rid in ids:
            update_replica(session, rid, state="starting")
            update_replica(session, rid, state="ready", url=f"http://gpu-a.local:{9000 + rid}")
    return ids


def report(fleet: Fleet, waiting: dict[int, int], running: int = 2) -> None:
    fleet.record_telemetry("gpu-a", pb.TelemetrySample(replicas=[
        pb.ReplicaStats(replica_id=rid, waiting=w, running=running, kv_cache_usage=0.2) for rid, w in waiting.items()
    ]))


def set_policy(db: sessionmaker[Session], **fields) -> None:
    with session_scope(db) as session:
        service.set_autoscaling(session, name="chat", policy=AutoscalePolicy(**{**NOW_POLICY, **fields}))


def desired(db: sessionmaker[Session]) -> int:
    with session_scope(db) as session:
        return get_deployment(session, "chat").desired_replicas


def test_a_queue_on_the_replicas_scales_the_deployment_up_and_records_why(db_factory: sessionmaker[Session]):
    ids = serving(db_factory, 1)
    fleet, woken = Fleet(), []
    job = AutoscaleJob(db_factory, fleet, on_change=lambda: woken.append(1), clock=Clock())
    set_policy(db_factory)
    report(fleet, {ids[0]: 11})
    job.tick()
    assert desired(db_factory) == 3 and woken  # ceil(11 / 4); the reconciler is woken to start them
    with session_scope(db_factory) as session:
        [decision] = service.history(session, "chat")
        assert (decision.current, decision.desired, decision.applied, decision.signal) == (1, 3, True, "queue")
        assert decision.load == 11 and "up to 3" in decision.reason
        [event] = list_events(session, kinds=["autoscaling.decision"])
        assert event.actor == "autoscaler" and "scaled chat from 1 to 3" in event.message
    assert job.evaluations["chat"].desired == 3


def test_advisory_mode_records_each_decision_once_and_applies_none(db_factory: sessionmaker[Session]):
    ids = serving(db_factory, 1)
    fleet, clock = Fleet(), Clock()
    job = AutoscaleJob(db_factory, fleet, clock=clock)
    set_policy(db_factory, mode=Mode.ADVISORY)
    report(fleet, {ids[0]: 20})
    for _ in range(3):
        job.tick()
        clock.t += 2
    assert desired(db_factory) == 1
    with session_scope(db_factory) as session:
        decisions = service.history(session, "chat")
        assert [(d.current, d.desired, d.applied, d.mode) for d in decisions] == [(1, 5, False, "advisory")]
        scale(session, name="chat", replicas=2)  # advisory: the operator still sets the count
    assert desired(db_factory) == 2


def test_while_autoscaling_is_on_a_manual_scale_is_refused_naming_autoscale(db_factory: sessionmaker[Session]):
    serving(db_factory, 1)
    set_policy(db_factory)
    with session_scope(db_factory) as session, pytest.raises(Conflict, match="llmctl autoscale chat"):
        scale(session, name="chat", replicas=3)
    with session_scope(db_factory) as session, pytest.raises(Conflict, match="autoscaled between 1 and 6"):
        deploy(session, name="chat", model="smollm2-135m", engine_config={}, replicas=3)
    set_policy(db_factory, mode=Mode.OFF)
    with session_scope(db_factory) as session:
        scale(session, name="chat", replicas=3)
    assert desired(db_factory) == 3


def test_a_dead_nodes_replicas_are_not_load_and_no_data_holds_the_count(db_factory: sessionmaker[Session]):
    ids = serving(db_factory, 2)
    fleet = Fleet()
    job = AutoscaleJob(db_factory, fleet, clock=Clock())
    set_policy(db_factory)
    job.tick()  # no telemetry at all yet
    assert desired(db_factory) == 2 and job.evaluations["chat"].signal == "no data"
    report(fleet, {ids[0]: 40, ids[1]: 40})
    with session_scope(db_factory) as session:
        from llmctl.controlplane.services.nodes import set_node_state

        set_node_state(session, name="gpu-a", state="unhealthy")
    job.tick()
    assert desired(db_factory) == 2  # the lost node's full queues do not scale the deployment up


def test_a_policy_that_cannot_work_is_refused_before_it_is_stored(db_factory: sessionmaker[Session]):
    serving(db_factory, 1)
    with pytest.raises(InvalidArgument, match="min <= max"):
        service.make_policy(min_replicas=5, max_replicas=2)
    with session_scope(db_factory) as session:
        assert service.get_autoscaling(session, "chat") is None
