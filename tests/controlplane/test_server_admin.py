"""AdminService reads and watches, and one full serve-restart-adopt cycle on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import grpc
import httpx

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import (
    Admin,
    ScriptedAgent,
    running_control_plane,
    status,
    wait_for,
)


def test_watch_events_streams_a_deploy_within_a_second_and_resumes_after_an_id(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        admin.deploy("warmup", replicas=0)
        last = admin.events()[-1].id
        received: queue.Queue[tuple[float, pb.Event]] = queue.Queue()
        watch = admin.WatchEvents(pb.WatchEventsRequest(after_id=last, deployment="chat"), timeout=30)

        def read() -> None:
            try:
                for event in watch:
                    received.put((time.monotonic(), event))
            except grpc.RpcError:
                pass  # cancelled below

        threading.Thread(target=read, daemon=True).start()
        time.sleep(0.3)
        sent = time.monotonic()
        admin.deploy("chat", model="m", replicas=0)
        at, event = received.get(timeout=5)
        assert event.kind == "deployment.deployed" and event.deployment == "chat" and event.id > last
        assert at - sent < 1.0
        assert json.loads(event.details_json)["revision"] == 1
        admin.deploy("warmup", replicas=0, max_num_seqs=4)  # another deployment: filtered out
        admin.Scale(pb.ScaleRequest(name="chat", replicas=0))
        admin.deploy("chat", model="m", replicas=0, max_num_seqs=4)
        _, next_event = received.get(timeout=5)
        assert (next_event.kind, next_event.deployment) == ("deployment.deployed", "chat")
        assert next_event.id > event.id
        watch.cancel()

        resumed = admin.ListEvents(pb.ListEventsRequest(after_id=event.id, deployment="chat")).events
        assert resumed[0].id == next_event.id and {e.deployment for e in resumed} == {"chat"}


def test_revisions_tenants_and_usage_are_listed(tmp_path: Path):
    with running_control_plane(tmp_path, response_cache_mb=1) as plane, \
            Admin(plane.grpc_address, plane.admin_token) as admin:
        first = admin.deploy("chat", model="m", replicas=0)
        assert first.created_revision and first.revision == 1
        again = admin.deploy("chat", model="m", replicas=0)
        assert not again.created_revision and again.revision == 1  # nothing changed: no revision
        admin.deploy("chat", model="m", replicas=0, max_num_seqs=8)
        rolled = admin.Rollback(pb.RollbackRequest(name="chat"))
        assert rolled.revision == 1
        revisions = admin.ListRevisions(pb.ListRevisionsRequest(name="chat")).revisions
        assert [(r.number, r.current) for r in revisions] == [(1, True), (2, False)]
        assert json.loads(revisions[1].engine_config_json)["max_num_seqs"] == 8

        created = admin.CreateTenant(pb.CreateTenantRequest(name="acme", rpm=60, monthly_tokens=1000))
        assert created.api_key.startswith("llmctl-") and created.tenant.rpm == 60
        tenants = admin.ListTenants(pb.ListTenantsRequest()).tenants
        assert [(t.name, t.monthly_tokens, t.cache_sampled) for t in tenants] == [("acme", 1000, False)]
        updated = admin.UpdateTenant(pb.UpdateTenantRequest(name="acme", cache_sampled=True))
        assert (updated.cache_sampled, updated.quality_opt_out) == (True, False)
        assert [t.cache_sampled for t in admin.ListTenants(pb.ListTenantsRequest()).tenants] == [True]
        assert list(admin.GetUsage(pb.GetUsageRequest(tenant="acme")).rows) == []
        # The key works at the gateway: the deployment is known but has no ready replica yet.
        reply = httpx.post(f"{plane.gateway_url}/v1/completions", timeout=10,
                           headers={"authorization": f"Bearer {created.api_key}"},
                           json={"model": "chat", "prompt": "hi", "max_tokens": 1})
        assert reply.status_code == 503
        # --response-cache-mb gave the gateway its exact cache.
        assert "# TYPE llmctl_gateway_cache_entries gauge" in httpx.get(f"{plane.gateway_url}/metrics").text


def test_serving_survives_a_control_plane_restart_on_each_database(db_url: str, tmp_path: Path):
    """The same cycle on SQLite and PostgreSQL: place, ready, restart, adopt."""
    with running_control_plane(tmp_path, database_url=db_url) as plane, \
            Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", replicas=1)
        start = agent.start_replica()
        agent.serve(start, url="http://a:9001")
        wait_for(lambda: admin.GetDeployment(pb.GetDeploymentRequest(name="chat")).ready_replicas == 1)
        agent.close()

    with running_control_plane(tmp_path, database_url=db_url) as plane, \
            Admin(plane.grpc_address, plane.admin_token) as admin:
        assert [e.url for e in plane.routes.endpoints("chat")] == ["http://a:9001"]
        agent = ScriptedAgent(plane, "a").join(
            [status(start.replica_id, pb.REPLICA_STATE_READY, deployment="chat", revision=1,
                    url="http://a:9001")])
        assert agent.quiet_for(0.8) == []
        wait_for(lambda: [n.state for n in admin.ListNodes(pb.ListNodesRequest()).nodes] == ["healthy"])
        shown = admin.GetDeployment(pb.GetDeploymentRequest(name="chat"))
        assert [(r.id, r.node) for r in shown.replicas] == [(start.replica_id, "a")]
        assert shown.ready_replicas == 1
        agent.close()
