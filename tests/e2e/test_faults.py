"""Faults with real processes (issue 16): a private PostgreSQL, `llmctl server` on it, two `llmctl agent`
processes with a tiny random Llama replica each, and clients streaming through the gateway while a fault is
injected: a cut network between an agent and the control plane, a PostgreSQL restart, kill -9 of the control
plane, kill -9 of an agent. One fleet serves the whole module, in this order (the agent kill comes last: it
leaves one node dead); each test starts by waiting for the fleet to be settled. The scenarios live in
tests/e2e/faults.py, shared with benchmarks/faults.py, and every report is printed (-rP shows it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import faults
from tests.e2e.fleet import Fleet

# About 100 s on the 2-core box: `make test-e2e` runs it; CI's `make test` keeps the quick outage test
# (tests/controlplane/test_server_database_outage.py) and the daemon's reconnect tests.
pytestmark = [pytest.mark.slow, pytest.mark.protocol]

ENGINE = {"dtype": "float32", "num_threads": 1, "num_kv_blocks": 96, "max_model_len": 256, "max_num_seqs": 4}


@pytest.fixture(scope="module")
def fleet(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("faults"), str(tiny_llama), engine=ENGINE, node_timeout_s=10.0)
    try:
        fleet.start()
        yield fleet
    except BaseException:
        print(fleet.log("server")[-4000:])
        raise
    finally:
        fleet.close()


def show(report: faults.FaultReport) -> None:
    print(json.dumps(report.as_dict(), indent=1))


def test_a_cut_network_leaves_the_agent_serving_and_it_reconnects_without_restarting_replicas(fleet: Fleet):
    # Heartbeats stop for the cut plus the agent's backoff (up to 4 s by then) plus a heartbeat interval: well
    # below the node timeout. A longer silence marks the node lost and replaces its replicas, by design
    # (test_server_agents.py shows that path and the stray being stopped).
    report = faults.cut_network(fleet, cut_s=2.5)
    show(report)
    extra = report.extra
    # The gateway reaches replicas directly: clients see nothing of the cut.
    assert report.sent > 0 and report.completed == report.sent
    # The agent reconnected (refused while cut, backing off) and its Hello handed its replica over: same
    # replicas, same processes, nothing lost, created or stopped, and the node never went unhealthy.
    assert extra["reconnects"] >= 1 and report.recovered_s is not None and report.recovered_s < 10
    assert extra["replicas_after"] == extra["replicas_before"]
    assert all(extra["pids_unchanged"].values()), extra["pids_unchanged"]
    assert not {"replica.created", "replica.lost", "replica.stopping", "node.unhealthy"} & set(extra["events"])
    assert extra["store_problems"] == []


def test_postgresql_down_longer_than_the_node_timeout_costs_no_request_and_no_replica(fleet: Fleet):
    # Down for longer than the node timeout: every heartbeat write fails meanwhile.
    report = faults.restart_postgres(fleet, down_s=fleet.node_timeout_s + 2)
    show(report)
    extra = report.extra
    # Keys that authenticated lately still do while the database is away; answered requests are billed
    # once it is back (usage rows retried, none lost).
    assert report.sent > 0 and report.completed == report.sent and report.http_5xx == 0
    assert extra["usage_rows_written"] == extra["usage_rows_expected"] == report.accepted
    # The operator's writes failed with UNAVAILABLE while it was down (reported), and every acknowledged one
    # is stored; after the restart the control plane writes again (pool pre-ping replaced dead connections).
    # The error names the database, not an unreachable control plane (the client used to say the latter).
    assert extra["writes_failed"] >= 1
    assert all(f.startswith("Unavailable: cannot use the database") for f in extra["failure_examples"]), \
        extra["failure_examples"]
    assert extra["acked_missing"] == [] and extra["writes_resumed"]
    # Agents were heard all along: no node went unhealthy, no replica was replaced.
    assert extra["replicas_after"] == extra["replicas_before"]
    assert not {"node.unhealthy", "replica.lost", "replica.created"} & set(extra["events"])
    assert extra["store_problems"] == []


def test_a_killed_control_plane_loses_no_acknowledged_write_and_its_agents_keep_serving(fleet: Fleet):
    report = faults.kill_control_plane(fleet)
    show(report)
    extra = report.extra
    # Clients of the replicas never notice; the agents reconnect to the new server and are adopted.
    assert report.sent > 0 and report.completed == report.sent
    assert extra["replicas_after"] == extra["replicas_before"]
    assert all(extra["pids_unchanged"].values()), extra["pids_unchanged"]
    # Every write the old server acknowledged is in SQL once; writes in flight at the kill either took
    # effect once or not at all (store_problems checks one row and one event per tenant).
    assert extra["acked_missing"] == [] and extra["writes_acked"] > 0 and extra["writes_resumed"]
    assert extra["store_problems"] == []
    # The gateway lives in the server process: it serves again once the new server is up. Usage is never
    # billed twice (answers finished right at the kill may go unbilled: their rows were still in memory).
    assert extra["gateway"]["recovered_s"] is not None
    assert 0 <= extra["gateway"]["answered_but_unbilled"] <= 2


def test_a_killed_agent_ends_its_streams_with_an_error_event_and_its_replica_moves(fleet: Fleet):
    report = faults.kill_agent(fleet, victim="a")
    show(report)
    extra = report.extra
    # Nothing hangs and nothing is cut without a word: every accepted request either finished or ended with
    # an error event; streams were running on the killed replica, so some did.
    assert report.lost == 0 and report.error_events >= 1
    assert all("failed mid-stream" in e for e in extra["error_event_examples"])
    # Attempts that found the replica dead moved to the other one: no 5xx, none refused.
    assert report.http_5xx == 0 and report.refused == 0
    assert report.completed + report.error_events == report.sent
    # Once the node is marked lost every request succeeds, and its replica runs on the other node.
    assert extra["after_lost"]["sent"] > 0 and extra["after_lost"]["not_ok"] == 0
    assert extra["nodes_after"] == ["b", "b"] and "replica.lost" in extra["events"]
    assert extra["store_problems"] == []
