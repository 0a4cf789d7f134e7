"""AdminClient: the AdminService over gRPC, as `llmctl` (and scripts, tests, the dashboard) call it.

Every call carries `authorization: Bearer <admin token>`. A failed call raises the controlplane.errors class
the server raised, with the server's message; a control plane that cannot be reached raises Unavailable
saying so, with the address, so the operator knows which end to look at.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from llmctl.controlplane.errors import (
    ERROR_METADATA,
    AlreadyExists,
    Conflict,
    ControlPlaneError,
    Forbidden,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.tls import ClientTls, open_channel

DEFAULT_TIMEOUT_S = 15.0
_ERRORS: dict[grpc.StatusCode, type[ControlPlaneError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}
# What gRPC's transport (not our server) says when it could not reach or lost the peer.
_TRANSPORT_HINTS = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "socket closed",
    "connection reset",
    "dns resolution",
    "name resolution",
    "no address",
    "unreachable",
    "backends failing",
    "broken pipe",
    "end of tcp stream",
    "goaway",
    "timed out",
    "timeout",
)
# What gRPC core tells the calls in flight on a server that is stopping (UNAVAILABLE, not CANCELLED).
_SERVER_STOPPING = "cancelling all calls"


class AdminClient:
    """One channel to a control plane's AdminService; use as a context manager or call close()."""

    def __init__(
        self, address: str, admin_token: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, own_connection: bool = False,
        tls: ClientTls | None = None,
    ):
        """own_connection: do not share a TCP connection with other channels to the same address in this
        process (gRPC shares them by default), so a reconnecting client does not inherit another channel's
        reconnect backoff; long-lived watchers like the dashboard want this. tls: None for plaintext; a
        control plane started with --client-ca also wants this client's certificate in it."""
        self.address = address
        self.timeout_s = timeout_s
        self.tls = tls
        self._metadata = (("authorization", f"Bearer {admin_token}"),)
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        self._channel = open_channel(address, tls, options)
        self._stub = pb_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Deployments

    def list_deployments(self) -> list[pb.Deployment]:
        return list(self._call("ListDeployments", pb.ListDeploymentsRequest()).deployments)

    def get_deployment(self, name: str) -> pb.Deployment:
        return self._call("GetDeployment", pb.GetDeploymentRequest(name=name))

    def deploy(
        self, name: str, model: str, engine_config: dict[str, Any] | None = None, replicas: int | None = None, *,
        quality_sample_rate: float | None = None, quality_auto_rollback: bool | None = None,
        quality_threshold: float | None = None,
    ) -> pb.DeployResponse:
        """Create the deployment or a new revision of it; engine_config holds EngineConfig fields. Unset
        options keep what the deployment has (the defaults for a new one)."""
        request = pb.DeployRequest(name=name, model=model, engine_config_json=json.dumps(engine_config or {}))
        options = {"replicas": replicas, "quality_sample_rate": quality_sample_rate,
                   "quality_auto_rollback": quality_auto_rollback, "quality_threshold": quality_threshold}
        for field, value in options.items():
            if value is not None:
                setattr(request, field, value)
        return self._call("Deploy", request)

    def rollback(self, name: str, to_revision: int | None = None) -> pb.Deployment:
        request = pb.RollbackRequest(name=name)
        if to_revision is not None:
            request.to_revision = to_revision
        return self._call("Rollback", request)

    def list_revisions(self, name: str) -> list[pb.Revision]:
        """Oldest first."""
        return list(self._call("ListRevisions", pb.ListRevisionsRequest(name=name)).revisions)

    def scale(self, name: str, replicas: int) -> pb.Deployment:
        return self._call("Scale", pb.ScaleRequest(name=name, replicas=replicas))

    def set_autoscaling(self, name: str, policy: dict[str, Any]) -> pb.Autoscaling:
        """policy: AutoscalePolicy's fields by name (target_kv_usage None leaves that signal out)."""
        return self._call("SetAutoscaling", pb.SetAutoscalingRequest(deployment=name, policy=pb.AutoscalePolicy(**policy)))

    def get_autoscaling(self, name: str, *, limit: int = 0) -> pb.Autoscaling:
        """The policy, the last evaluation and up to `limit` decisions (0: the server's default)."""
        return self._call("GetAutoscaling", pb.GetAutoscalingRequest(deployment=name, limit=limit))

    def delete_deployment(self, name: str) -> None:
        self._call("DeleteDeployment", pb.DeleteDeploymentRequest(name=name))

    # Nodes

    def list_nodes(self) -> list[pb.Node]:
        return list(self._call("ListNodes", pb.ListNodesRequest()).nodes)

    def drain_node(self, name: str) -> pb.Node:
        return self._call("DrainNode", pb.DrainNodeRequest(name=name))

    def undrain_node(self, name: str) -> pb.Node:
        return self._call("UndrainNode", pb.UndrainNodeRequest(name=name))

    # Events

    def list_events(
        self, *, after_id: int = 0, deployment: str | None = None, limit: int = 0, newest: bool = False
    ) -> list[pb.Event]:
        """Events with id > after_id, oldest first; limit 0 is the server's default page size.
        newest: the last `limit` events rather than the first."""
        request = pb.ListEventsRequest(after_id=after_id, deployment=deployment or "", limit=limit, newest=newest)
        return list(self._call("ListEvents", request).events)

    def last_event_id(self, deployment: str | None = None) -> int:
        """The newest event's id (0 when there is none), to watch only what happens from now on."""
        last = self.list_events(deployment=deployment, limit=1, newest=True)
        return last[-1].id if last else 0

    def watch_events(self, *, after_id: int = 0, deployment: str | None = None) -> EventWatch:
        """Events after after_id, then new ones as they happen; iterate it, cancel() or close() to stop."""
        request = pb.WatchEventsRequest(after_id=after_id, deployment=deployment or "")
        return EventWatch(self, self._stub.WatchEvents(request, metadata=self._metadata))

    # Tenants and usage

    def create_tenant(
        self, name: str, *, rpm: int = 0, tpm: int = 0, monthly_tokens: int = 0, quality_opt_out: bool = False
    ) -> tuple[pb.Tenant, str]:
        """The new tenant and its API key; the key is shown this once (only its hash is stored)."""
        request = pb.CreateTenantRequest(name=name, rpm=rpm, tpm=tpm, monthly_tokens=monthly_tokens,
                                         quality_opt_out=quality_opt_out)
        response = self._call("CreateTenant", request)
        return response.tenant, response.api_key

    def update_tenant(self, name: str, *, quality_opt_out: bool | None = None,
                      cache_sampled: bool | None = None) -> pb.Tenant:
        request = pb.UpdateTenantRequest(name=name)
        if quality_opt_out is not None:
            request.quality_opt_out = quality_opt_out
        if cache_sampled is not None:
            request.cache_sampled = cache_sampled
        return self._call("UpdateTenant", request)

    def list_tenants(self) -> list[pb.Tenant]:
        return list(self._call("ListTenants", pb.ListTenantsRequest()).tenants)

    def get_usage(self, tenant: str, *, since: float | None = None) -> list[pb.UsageRow]:
        """Per-deployment usage since `since` (unix seconds; default: the start of this month)."""
        request = pb.GetUsageRequest(tenant=tenant)
        if since is not None:
            request.since = since
        return list(self._call("GetUsage", request).rows)

    # Quality

    def get_quality(self, name: str) -> pb.QualityReport:
        return self._call("GetQuality", pb.GetQualityRequest(name=name))

    def list_quality_samples(self, name: str, *, revision: int | None = None, limit: int = 0) -> list[pb.QualitySample]:
        """Stored samples, newest first (limit 0: the server's default)."""
        request = pb.ListQualitySamplesRequest(name=name, limit=limit)
        if revision is not None:
            request.revision = revision
        return list(self._call("ListQualitySamples", request).samples)

    def set_quality_reference(self, name: str, revision: int) -> pb.Deployment:
        return self._call("SetQualityReference", pb.SetQualityReferenceRequest(name=name, revision=revision))

    def set_semantic_cache(self, name: str, threshold: float | None) -> pb.SetSemanticCacheResponse:
        """The gateway's semantic cache for a deployment: on at `threshold`, or off (None); the response's
        warning says when the gateway cannot use it now."""
        request = pb.SetSemanticCacheRequest(name=name)
        if threshold is not None:
            request.threshold = threshold
        return self._call("SetSemanticCache", request)

    # Optimization runs

    def start_optimization(self, deployment: str, goal: str, options: dict[str, Any]) -> pb.OptimizationRun:
        """Start a run; options holds OptimizeOptions fields other than the goal (absent ones: defaults)."""
        request = pb.StartOptimizationRequest(deployment=deployment, goal=goal, options_json=json.dumps(options))
        return self._call("StartOptimization", request)

    def get_optimization(self, *, run_id: int = 0, deployment: str = "") -> pb.OptimizationRun:
        """One run by id, or (run_id 0) the newest run of `deployment`, with its report_json."""
        return self._call("GetOptimization", pb.GetOptimizationRequest(id=run_id, deployment=deployment))

    def list_optimizations(self, deployment: str = "", limit: int = 0) -> list[pb.OptimizationRun]:
        """Newest first, without report_json; deployment "" lists every deployment's runs."""
        request = pb.ListOptimizationsRequest(deployment=deployment, limit=limit)
        return list(self._call("ListOptimizations", request).runs)

    def cancel_optimization(self, *, run_id: int = 0, deployment: str = "") -> pb.OptimizationRun:
        """Stop a run (run_id 0: the running run of `deployment`) and its trial replicas."""
        return self._call("CancelOptimization", pb.CancelOptimizationRequest(id=run_id, deployment=deployment))

    # Traffic

    def get_traffic(self, deployment: str, *, window_s: float = 0.0) -> pb.TrafficSummary:
        """The shape of the deployment's gateway traffic over the last window_s seconds (0: the last hour) and
        the synthetic bench workload made from it (workload_json; empty with workload_error when too little)."""
        return self._call("GetTraffic", pb.GetTrafficRequest(deployment=deployment, window_s=window_s))

    def get_prompt_audit(self, deployment: str, *, window_s: float = 0.0, top: int = 0,
                         target_system_tokens: int | None = None, usd_per_mtok: float | None = None) -> pb.PromptAudit:
        """Where the deployment's prompt tokens went over the last window_s seconds (0: the last hour): by tenant,
        system prompt and shared prefix (top of each; 0: 5), and what a system prompt of target_system_tokens
        (None: half the mean) and a prefix cache save; usd_per_mtok prices them (None: the recorded cost)."""
        request = pb.GetPromptAuditRequest(deployment=deployment, window_s=window_s, top=top)
        if target_system_tokens is not None:
            request.target_system_tokens = target_system_tokens
        if usd_per_mtok is not None:
            request.usd_per_mtok = usd_per_mtok
        return self._call("GetPromptAudit", request)

    # Plumbing

    # Security

    def rotate_token(self, kind: str, *, grace_s: float | None = None, finish: bool = False) -> pb.RotateTokenResponse:
        """A new admin or join token (kind); the previous one works grace_s more (None: the server's default)."""
        request = pb.RotateTokenRequest(kind=kind, finish=finish)
        if grace_s is not None:
            request.grace_s = grace_s
        return self._call("RotateToken", request)

    def list_audit(self, *, since: float | None = None, limit: int = 0) -> list[pb.AuditEntry]:
        """Audited admin calls, newest first; since in unix seconds."""
        request = pb.ListAuditRequest(limit=limit)
        if since is not None:
            request.since = since
        return list(self._call("ListAudit", request).entries)

    # Model routes

    def set_model_route(self, deployment: str, *, companion: str = "", rule: str = "", max_in_flight: int = 0,
                        off: bool = False) -> pb.ModelRoute:
        """Send the deployment's simple requests (by `rule`) to `companion`; off removes the route."""
        return self._call("SetModelRoute", pb.SetModelRouteRequest(
            deployment=deployment, companion=companion, rule=rule, max_in_flight=max_in_flight, off=off))

    def get_model_route(self, deployment: str) -> pb.ModelRoute:
        return self._call("GetModelRoute", pb.GetModelRouteRequest(deployment=deployment))

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise self.error(e) from None

    def error(self, rpc_error: grpc.RpcError) -> ControlPlaneError:
        """The controlplane.errors exception a failed call stands for."""
        code = rpc_error.code() if callable(getattr(rpc_error, "code", None)) else None
        details = (rpc_error.details() if callable(getattr(rpc_error, "details", None)) else None) or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unavailable(
                f"control plane at {self.address} is unreachable: no answer within {self.timeout_s:g} s"
            )
        if code == grpc.StatusCode.UNAVAILABLE and not _raised_by_server(rpc_error) and (
            not details or any(hint in details.lower() for hint in _TRANSPORT_HINTS)
        ):
            reason = _first_line(details).rsplit(": ", 1)[-1] or "no connection"
            # A refused TLS handshake reaches us as a closed socket, like a server that is not there.
            hint = ""
            if "socket closed" in reason.lower():
                hint = (" If it is, it refused the TLS handshake: check --ca, --cert and --key (LLMCTL_CA, "
                        "LLMCTL_CERT, LLMCTL_KEY)" if self.tls is not None else
                        " If it is, it may want TLS: pass --ca (and --cert, --key)")
            return Unavailable(
                f"control plane at {self.address} is unreachable ({reason}); "
                f"is `llmctl server` running there?{hint}"
            )
        stopping = (code == grpc.StatusCode.UNAVAILABLE and not _raised_by_server(rpc_error)
                    and _SERVER_STOPPING in details.lower())
        if code == grpc.StatusCode.UNAVAILABLE and not stopping:
            return Unavailable(details)  # the server answered, e.g. that its database is down
        if code == grpc.StatusCode.CANCELLED or stopping:
            # A unary call is never cancelled from this side: the server stopped while answering it.
            return Unavailable(
                f"control plane at {self.address} is unreachable (it stopped while answering); "
                "is `llmctl server` running there?"
            )
        if code in _ERRORS:
            return _ERRORS[code](details or code.name.lower())
        name = code.name if code is not None else "UNKNOWN"
        return ControlPlaneError(f"control plane error ({name}): {details or 'no details'}")


class EventWatch:
    """An open WatchEvents stream: iterate for events; cancel() (from any thread) ends the iteration."""

    def __init__(self, client: AdminClient, call: Any):
        self._client, self._call = client, call
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[pb.Event]:
        try:
            yield from self._call
        except grpc.RpcError as e:
            if self._cancelled.is_set() or e.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._client.error(e) from None

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()

    close = cancel


def _raised_by_server(rpc_error: grpc.RpcError) -> bool:
    """Whether the control plane itself refused the call (its database is away, say), not the transport.
    Without this, a database error quoting "Connection refused" read as the control plane being down."""
    trailing = rpc_error.trailing_metadata() if callable(getattr(rpc_error, "trailing_metadata", None)) else None
    return any(key == ERROR_METADATA for key, _ in trailing or ())


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
