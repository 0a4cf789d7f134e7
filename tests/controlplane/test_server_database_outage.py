"""The control plane while its PostgreSQL database refuses every connection, longer than the node timeout.

The outage is real and private to the test: its database is closed to connections (ALTER DATABASE ...
ALLOW_CONNECTIONS false) and the control plane's sessions are terminated, as a restart would; the shared
server keeps serving everyone else. tests/e2e/test_faults.py restarts a whole PostgreSQL under load.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.conftest import _admin
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane, wait_for

NODE_TIMEOUT_S = 3.0


@contextmanager
def database_away(db_url: str) -> Iterator[None]:
    name = make_url(db_url).database
    _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    try:
        yield
    finally:
        _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_database_outage_loses_no_replica_report_and_costs_no_node(tmp_path: Path, db_url: str):
    with running_control_plane(tmp_path, database_url=db_url, node_timeout_s=NODE_TIMEOUT_S) as plane, \
            Admin(plane.grpc_address, plane.admin_token) as admin:
        started = time.monotonic()
        # Heartbeats less often than the stale check runs: when the database comes back, the check sees SQL's
        # last heartbeat (from before the outage) before any new one is written.
        agent = ScriptedAgent(plane, "a", beat_s=NODE_TIMEOUT_S - 1).join()
        admin.deploy("chat", replicas=1)
        start = agent.start_replica()
        agent.report(start.replica_id, pb.REPLICA_STATE_STARTING, deployment="chat", revision=start.revision)
        wait_for(lambda: [r.state for r in admin.GetDeployment(pb.GetDeploymentRequest(name="chat")).replicas]
                 == [pb.REPLICA_STATE_STARTING], what="the STARTING report in SQL")
        # Past the grace a fresh control plane gives its nodes, so the stale-node check is live.
        time.sleep(max(0.0, 2 * NODE_TIMEOUT_S + 0.5 - (time.monotonic() - started)))
        with database_away(db_url):
            # The replica turns READY while nothing can be written; heartbeats keep coming, unwritten, for
            # longer than the node timeout.
            agent.report(start.replica_id, pb.REPLICA_STATE_READY, deployment="chat", revision=start.revision,
                         url="http://a:9001")
            time.sleep(NODE_TIMEOUT_S + 1.0)
            with pytest.raises(Exception, match="cannot use the database"):
                admin.ListDeployments(pb.ListDeploymentsRequest())
        # The READY report is written once the database is back, and the replica is routed.
        wait_for(lambda: [e.replica_id for e in plane.routes.endpoints("chat")] == [start.replica_id],
                 timeout=10, what="the replica routed after the outage")
        nodes = {n.name: n.state for n in admin.ListNodes(pb.ListNodesRequest()).nodes}
        assert nodes == {"a": "healthy"}  # heard all along, though no heartbeat reached SQL for > the timeout
        kinds = {e.kind for e in admin.ListEvents(pb.ListEventsRequest(limit=1000)).events}
        assert not {"node.unhealthy", "replica.lost"} & kinds
        assert agent.quiet_for(1.0) == []  # nothing started again, nothing stopped
        agent.close()
