"""Recorded traffic in SQL on SQLite and PostgreSQL: the window summary, the synthetic workload made from it,
refusals when there is too little, and retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import utcnow
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.jobs import purge_traffic_samples
from llmctl.controlplane.optimizer.options import OptimizeOptions, check_workload
from llmctl.controlplane.services import deployments, traffic

# (seconds before now, prompt tokens, output tokens, shared prefix tokens): one request every 2 s.
RECORDED = [(40 - 2 * i, 100 + 10 * i, 20 + i, 60 if i else 0) for i in range(20)]


def record_all(session: Session, name: str = "chat", recorded=RECORDED) -> None:
    now = utcnow()
    for ago, prompt, output, shared in recorded:
        traffic.record(session, deployment_name=name, arrived_at=now - timedelta(seconds=ago),
                       prompt_tokens=prompt, completion_tokens=output, shared_prefix_tokens=shared)


def test_the_summary_has_the_windows_distributions(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deployments.deploy(session, name="chat", model="tiny", engine_config={})
        record_all(session)
        record_all(session, "other")
        found = traffic.summary(session, name="chat", since=utcnow() - timedelta(minutes=60))
        # The last 15 s hold the newest 7 requests only.
        recent = traffic.summary(session, name="chat", since=utcnow() - timedelta(seconds=15))
    assert found["requests"] == 20 and recent["requests"] == 7
    assert found["prompt_tokens"] == {"mean": 195.0, "p50": 190.0, "p95": 280.0, "max": 290.0}
    assert found["completion_tokens"]["p50"] == 29.0 and found["completion_tokens"]["max"] == 39.0
    assert found["shared_prefix_tokens"]["p50"] == 60.0
    assert found["interarrival_s"]["p50"] == pytest.approx(2.0, abs=1e-3)
    assert found["request_rate"] == pytest.approx(0.5, rel=1e-3)
    assert found["shared_fraction"] == pytest.approx(19 * 60 / sum(r[1] for r in RECORDED))
    assert found["first_at"] < found["last_at"] and found["workload_error"] is None


def test_the_synthetic_workload_keeps_the_recorded_lengths_prefix_and_rate(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deployments.deploy(session, name="chat", model="tiny", engine_config={})
        record_all(session)
        workload = traffic.window_workload(session, name="chat", window_s=3600)
        again = traffic.window_workload(session, name="chat", window_s=3600)
        fewer = traffic.synthetic_workload(traffic.samples(session, name="chat", since=utcnow() - timedelta(hours=1)),
                                           max_requests=8, seed=1)
    assert workload == again  # the same seed makes the same workload
    assert workload["requests"] == 20 and workload["seed"] == 0
    assert workload["shared_prefix_len"] == 60 and workload["request_rate"] == pytest.approx(0.5, rel=1e-3)
    # Each recorded request once, the shared prefix taken off its prompt so that prefix + input = the prompt.
    assert sorted(map(tuple, workload["lengths"])) == sorted((p - 60, o) for _, p, o, _ in RECORDED)
    assert workload["input_len"] == [40, 230] and workload["output_len"] == [20, 39]
    # It is a workload the optimizer takes as it is.
    assert check_workload(workload) == workload
    assert OptimizeOptions(workload=workload).workload == workload
    assert fewer["requests"] == len(fewer["lengths"]) == 8
    assert set(map(tuple, fewer["lengths"])) <= {(p - 60, o) for _, p, o, _ in RECORDED}


def test_slow_traffic_is_sped_up_to_fit_one_measurement_and_a_burst_arrives_at_once(
        db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deployments.deploy(session, name="chat", model="tiny", engine_config={})
        record_all(session, "chat", [(3000 - 300 * i, 50, 10, 0) for i in range(10)])  # one every 5 minutes
        record_all(session, "burst", [(5, 50, 10, 0)] * 9)
        slow = traffic.summary(session, name="chat", since=utcnow() - timedelta(hours=1))
        burst = traffic.window_workload(session, name="burst", window_s=60)
    assert slow["request_rate"] == pytest.approx(1 / 300, rel=1e-3)
    assert slow["workload"]["request_rate"] == pytest.approx(9 / traffic.MAX_ARRIVAL_SPAN_S, rel=1e-3)
    assert slow["workload_speedup"] == pytest.approx(300 * 9 / traffic.MAX_ARRIVAL_SPAN_S, rel=1e-2)
    assert burst["request_rate"] == "inf"


def test_too_little_traffic_is_refused_with_what_to_do(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deployments.deploy(session, name="chat", model="tiny", engine_config={})
        record_all(session, "chat", RECORDED[-3:])
        with pytest.raises(InvalidArgument, match=r"deployment chat saw only 3 requests in the last 30 minutes "
                                                  r"\(8 needed\); send traffic or give --workload FILE"):
            traffic.window_workload(session, name="chat", window_s=1800)
        found = traffic.summary(session, name="chat", since=utcnow() - timedelta(hours=1))
        assert found["workload"] is None and "saw only 3 requests" in found["workload_error"]
        with pytest.raises(NotFound, match="'nope' not found"):
            traffic.summary(session, name="nope", since=utcnow() - timedelta(hours=1))
        with pytest.raises(InvalidArgument, match="traffic window"):
            traffic.window_workload(session, name="chat", window_s=-1)


def test_a_deleted_deployments_traffic_stays_until_the_retention_purge(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deployments.deploy(session, name="chat", model="tiny", engine_config={})
        record_all(session)
        traffic.record(session, deployment_name="chat", arrived_at=utcnow() - timedelta(days=8), prompt_tokens=5,
                       completion_tokens=5, shared_prefix_tokens=0)
        deployments.delete_deployment(session, name="chat")
    with session_scope(db_factory) as session:
        assert traffic.summary(session, name="chat", since=utcnow() - timedelta(days=30))["requests"] == 21
    assert purge_traffic_samples(db_factory, retention_s=7 * 24 * 3600) == 1
    assert purge_traffic_samples(db_factory, retention_s=7 * 24 * 3600) == 0
    with session_scope(db_factory) as session:
        assert traffic.summary(session, name="chat", since=utcnow() - timedelta(days=30))["requests"] == 20


@pytest.mark.parametrize(("lengths", "message"), [
    ([], "workload lengths must be 1 to 10000 pairs"),
    ([[5, 0]], "workload lengths must be 1 to 10000 pairs"),
    ([[5, 6, 7]], "workload lengths must be 1 to 10000 pairs"),
    ([[1, 1]] * 10_001, "workload lengths must be 1 to 10000 pairs"),
    ("32:64", "workload lengths must be"),
])
def test_bad_lengths_are_refused(lengths, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_workload({"lengths": lengths})
