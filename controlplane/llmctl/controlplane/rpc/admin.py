"""AdminService: what llmctl and the dashboard call. Each rpc unpacks, runs one service function in one
transaction, converts; changes wake the reconciler so they take effect at once, not at its next tick."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.autoscaling.runner import AutoscaleJob
from llmctl.controlplane.db.models import Deployment, DeploymentRoute, utcnow
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.fleet import Fleet
from llmctl.controlplane.optimizer.options import OptimizeOptions
from llmctl.controlplane.optimizer.runner import Optimizer
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.reconciler import live_replicas
from llmctl.controlplane.rpc import convert
from llmctl.controlplane.services import audit as audit_service
from llmctl.controlplane.services import autoscaling as autoscaling_service
from llmctl.controlplane.services import check_count, quality_fields
from llmctl.controlplane.services import deployments as deployments_service
from llmctl.controlplane.services import events as events_service
from llmctl.controlplane.services import model_routes as model_routes_service
from llmctl.controlplane.services import nodes as nodes_service
from llmctl.controlplane.services import optimizer as optimizer_service
from llmctl.controlplane.services import prompts as prompts_service
from llmctl.controlplane.services import quality as quality_service
from llmctl.controlplane.services import tenants as tenants_service
from llmctl.controlplane.services import traffic as traffic_service
from llmctl.controlplane.tokens import DEFAULT_GRACE_S, TokenRing

ACTOR = "admin"
DEFAULT_EVENT_LIMIT = 200
DEFAULT_SAMPLE_LIMIT = 100
MAX_SAMPLE_LIMIT = 1000
TREND_POINTS = 100
"""Latest scored samples per revision whose score difference the dashboard plots."""
DEFAULT_TRAFFIC_WINDOW_S = 3600.0
WATCH_POLL_S = 0.25
"""How often WatchEvents looks for new events; an event reaches watchers within about this long."""


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, db: sessionmaker[Session], fleet: Fleet, *, on_change: Callable[[], None],
                 stopping: threading.Event, optimizer: Optimizer | None = None,
                 on_optimize: Callable[[], None] = lambda: None, autoscaler: AutoscaleJob | None = None,
                 tokens: dict[str, TokenRing] | None = None, gateway_response_cache: bool | None = None) -> None:
        self._db, self._fleet = db, fleet
        self._gateway_response_cache = gateway_response_cache
        """Whether this process's gateway runs an exact response cache (None: not known here)."""
        self._tokens = tokens or {}
        self._autoscaler = autoscaler
        self._on_change = on_change
        self._stopping = stopping
        self._optimizer = optimizer
        self._on_optimize = on_optimize

    # -- deployments ------------------------------------------------------------------------------------
    def ListDeployments(self, request: pb.ListDeploymentsRequest,
                        context: grpc.ServicerContext) -> pb.ListDeploymentsResponse:
        with session_scope(self._db) as session:
            replicas: dict[int, list] = {}
            for replica in live_replicas(session):
                replicas.setdefault(replica.deployment_id, []).append(replica)
            return pb.ListDeploymentsResponse(deployments=[
                convert.deployment_to_proto(d, replicas.get(d.id, []), self._fleet, _quality_state(session, d))
                for d in deployments_service.list_deployments(session)
            ])

    def GetDeployment(self, request: pb.GetDeploymentRequest, context: grpc.ServicerContext) -> pb.Deployment:
        with session_scope(self._db) as session:
            return self._deployment(session, deployments_service.get_deployment(session, request.name))

    def Deploy(self, request: pb.DeployRequest, context: grpc.ServicerContext) -> pb.DeployResponse:
        config = convert.engine_config_from_json(request.engine_config_json)
        policy = {name: getattr(request, f"quality_{name}") if request.HasField(f"quality_{name}") else None
                  for name in ("sample_rate", "auto_rollback", "threshold")}
        with session_scope(self._db) as session:
            existed = deployments_service.exists(session, request.name)
            deployment, revision, created = deployments_service.deploy(
                session, name=request.name, model=request.model, engine_config=config,
                replicas=request.replicas if request.HasField("replicas") else None, actor=ACTOR,
                quality=quality_fields(**policy),
            )
            if existed:
                quality_service.set_policy(session, deployment, actor=ACTOR, **policy)
            response = pb.DeployResponse(deployment=self._deployment(session, deployment),
                                         revision=revision.number, created_revision=created)
        self._on_change()
        return response

    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext) -> pb.Deployment:
        with session_scope(self._db) as session:
            deployments_service.rollback(
                session, name=request.name, actor=ACTOR,
                to_revision=request.to_revision if request.HasField("to_revision") else None,
            )
            response = self._deployment(session, deployments_service.get_deployment(session, request.name))
        self._on_change()
        return response

    def ListRevisions(self, request: pb.ListRevisionsRequest,
                      context: grpc.ServicerContext) -> pb.ListRevisionsResponse:
        with session_scope(self._db) as session:
            current = deployments_service.get_deployment(session, request.name).current_revision_id
            return pb.ListRevisionsResponse(revisions=[
                convert.revision_to_proto(r, current)
                for r in deployments_service.list_revisions(session, request.name)
            ])

    def Scale(self, request: pb.ScaleRequest, context: grpc.ServicerContext) -> pb.Deployment:
        with session_scope(self._db) as session:
            deployment = deployments_service.scale(session, name=request.name, replicas=request.replicas,
                                                   actor=ACTOR)
            response = self._deployment(session, deployment)
        self._on_change()
        return response

    def SetAutoscaling(self, request: pb.SetAutoscalingRequest, context: grpc.ServicerContext) -> pb.Autoscaling:
        if not request.HasField("policy"):
            raise InvalidArgument("an autoscaling policy is required")
        policy = convert.autoscale_policy_from_proto(request.policy)
        with session_scope(self._db) as session:
            autoscaling_service.set_autoscaling(session, name=request.deployment, policy=policy, actor=ACTOR)
            response = self._autoscaling(session, request.deployment, 0)
        self._on_change()
        return response

    def GetAutoscaling(self, request: pb.GetAutoscalingRequest, context: grpc.ServicerContext) -> pb.Autoscaling:
        check_count("limit", request.limit, 0, 1000)
        with session_scope(self._db) as session:
            return self._autoscaling(session, request.deployment, request.limit or autoscaling_service.HISTORY_LIMIT)

    def _autoscaling(self, session: Session, name: str, limit: int) -> pb.Autoscaling:
        row = autoscaling_service.get_autoscaling(session, name)
        decisions = autoscaling_service.history(session, name, limit) if limit else []
        last = self._autoscaler.evaluations.get(name) if self._autoscaler is not None else None
        return convert.autoscaling_to_proto(name, row, last, decisions)

    def DeleteDeployment(self, request: pb.DeleteDeploymentRequest,
                         context: grpc.ServicerContext) -> pb.DeleteDeploymentResponse:
        # The replica rows go with the deployment; the reconciler then finds the agents running replicas
        # nobody wants, takes them out of the gateway and stops them.
        with session_scope(self._db) as session:
            deployments_service.delete_deployment(session, name=request.name, actor=ACTOR)
        self._on_change()
        return pb.DeleteDeploymentResponse()

    def _deployment(self, session: Session, deployment: Deployment) -> pb.Deployment:
        return convert.deployment_to_proto(deployment, live_replicas(session, deployment.id), self._fleet,
                                           _quality_state(session, deployment))

    # -- quality --------------------------------------------------------------------------------------------
    def GetQuality(self, request: pb.GetQualityRequest, context: grpc.ServicerContext) -> pb.QualityReport:
        with session_scope(self._db) as session:
            deployment, summaries = quality_service.summaries(session, name=request.name)
            current = deployment.current_revision.number if deployment.current_revision else 0
            revisions = []
            for summary in summaries:
                rows = quality_service.scored(session, deployment_id=deployment.id, revision=summary.revision,
                                              limit=TREND_POINTS)
                trend = [r.mean_logprob - r.baseline_mean_logprob for r in rows]
                revisions.append(convert.revision_quality_to_proto(summary, trend, summary.revision == current))
            return pb.QualityReport(deployment=deployment.name, policy=convert.quality_policy_to_proto(deployment),
                                    revisions=revisions)

    def ListQualitySamples(self, request: pb.ListQualitySamplesRequest,
                           context: grpc.ServicerContext) -> pb.ListQualitySamplesResponse:
        limit = check_count("limit", request.limit, 0, MAX_SAMPLE_LIMIT) or DEFAULT_SAMPLE_LIMIT
        with session_scope(self._db) as session:
            samples = quality_service.list_samples(
                session, name=request.name, limit=limit,
                revision=request.revision if request.HasField("revision") else None)
            names = {t.id: t.name for t in tenants_service.list_tenants(session)}
            return pb.ListQualitySamplesResponse(
                samples=[convert.quality_sample_to_proto(s, names.get(s.tenant_id)) for s in samples])

    def SetQualityReference(self, request: pb.SetQualityReferenceRequest,
                            context: grpc.ServicerContext) -> pb.Deployment:
        with session_scope(self._db) as session:
            quality_service.set_reference(session, name=request.name, revision=request.revision, actor=ACTOR)
            response = self._deployment(session, deployments_service.get_deployment(session, request.name))
        self._on_change()  # the scorer replica follows the reference
        return response

    def SetSemanticCache(self, request: pb.SetSemanticCacheRequest,
                         context: grpc.ServicerContext) -> pb.SetSemanticCacheResponse:
        threshold = request.threshold if request.HasField("threshold") else None
        with session_scope(self._db) as session:
            deployment = deployments_service.set_semantic_cache(session, name=request.name, threshold=threshold,
                                                                actor=ACTOR)
            response = pb.SetSemanticCacheResponse(deployment=self._deployment(session, deployment))
        self._on_change()  # the reconciler hands the gateway the new threshold
        if threshold is not None and self._gateway_response_cache is False:
            # The semantic cache indexes the exact cache's answers: stored, but unused until the server has one.
            response.warning = ("this control plane's gateway runs without a response cache, so the semantic "
                                "cache stays unused until `llmctl server` runs with --response-cache-mb N")
        return response

    # -- optimization runs --------------------------------------------------------------------------------
    def StartOptimization(self, request: pb.StartOptimizationRequest,
                          context: grpc.ServicerContext) -> pb.OptimizationRun:
        options = OptimizeOptions.from_json(request.goal, request.options_json)
        with session_scope(self._db) as session:
            if options.from_traffic:  # the run stores, and measures with, the workload made here
                workload = traffic_service.window_workload(session, name=request.deployment,
                                                           window_s=options.traffic_window_minutes * 60,
                                                           seed=options.workload.get("seed", 0))
                options = dataclasses.replace(options, workload=workload)
            run = optimizer_service.start_run(session, name=request.deployment, options=options, actor=ACTOR)
            response = convert.optimization_run_to_proto(run, optimizer_service.report(run))
        self._on_optimize()
        return response

    def GetOptimization(self, request: pb.GetOptimizationRequest,
                        context: grpc.ServicerContext) -> pb.OptimizationRun:
        with session_scope(self._db) as session:
            run = optimizer_service.get_run(session, run_id=request.id, name=request.deployment)
            return convert.optimization_run_to_proto(run, optimizer_service.report(run))

    def ListOptimizations(self, request: pb.ListOptimizationsRequest,
                          context: grpc.ServicerContext) -> pb.ListOptimizationsResponse:
        with session_scope(self._db) as session:
            rows = optimizer_service.list_runs(session, name=request.deployment, limit=request.limit)
            return pb.ListOptimizationsResponse(runs=[convert.optimization_run_to_proto(r, None) for r in rows])

    def CancelOptimization(self, request: pb.CancelOptimizationRequest,
                           context: grpc.ServicerContext) -> pb.OptimizationRun:
        with self._fleet.lock:  # its trial replicas change state (see Fleet.lock)
            with session_scope(self._db) as session:
                run, pending = optimizer_service.cancel_run(session, run_id=request.id, name=request.deployment,
                                                            actor=ACTOR)
                stop = [(m.node_name, m.id) for m in pending]
                response = convert.optimization_run_to_proto(run, optimizer_service.report(run))
        if self._optimizer is not None:
            self._optimizer.cancel_on_agents(stop)
        self._on_change()  # the reconciler stops the trial replicas
        return response

    # -- traffic ------------------------------------------------------------------------------------------
    def GetTraffic(self, request: pb.GetTrafficRequest, context: grpc.ServicerContext) -> pb.TrafficSummary:
        now = utcnow()
        since = traffic_service.window_start(request.window_s or DEFAULT_TRAFFIC_WINDOW_S, now)
        with session_scope(self._db) as session:
            found = traffic_service.summary(session, name=request.deployment, since=since, until=now)
        return convert.traffic_to_proto(found)

    def GetPromptAudit(self, request: pb.GetPromptAuditRequest, context: grpc.ServicerContext) -> pb.PromptAudit:
        now = utcnow()
        since = traffic_service.window_start(request.window_s or DEFAULT_TRAFFIC_WINDOW_S, now)
        with session_scope(self._db) as session:
            found = prompts_service.audit(
                session, name=request.deployment, since=since, until=now,
                top=request.top or prompts_service.DEFAULT_TOP,
                target_system_tokens=_optional(request, "target_system_tokens"),
                usd_per_mtok=_optional(request, "usd_per_mtok"))
        return convert.prompt_audit_to_proto(found)

    # -- nodes --------------------------------------------------------------------------------------------
    def ListNodes(self, request: pb.ListNodesRequest, context: grpc.ServicerContext) -> pb.ListNodesResponse:
        with session_scope(self._db) as session:
            counts = Counter(r.node_id for r in live_replicas(session))
            return pb.ListNodesResponse(nodes=[
                convert.node_to_proto(n, counts[n.id], self._fleet.node_telemetry(n.name))
                for n in nodes_service.list_nodes(session)
            ])

    def DrainNode(self, request: pb.DrainNodeRequest, context: grpc.ServicerContext) -> pb.Node:
        # The node takes no new replicas from now; the reconciler moves its replicas elsewhere and stops
        # each one only once its replacement is ready.
        with session_scope(self._db) as session:
            node = nodes_service.set_node_state(session, name=request.name, state="draining", actor=ACTOR)
            count = sum(1 for r in live_replicas(session) if r.node_id == node.id)
            response = convert.node_to_proto(node, count, self._fleet.node_telemetry(node.name))
        self._on_change()
        return response

    def UndrainNode(self, request: pb.UndrainNodeRequest, context: grpc.ServicerContext) -> pb.Node:
        with session_scope(self._db) as session:
            node = nodes_service.get_node(session, request.name)
            if node.state.value != "draining":
                raise InvalidArgument(f"node {request.name!r} is {node.state.value}, not draining")
            node = nodes_service.set_node_state(session, name=request.name, state="healthy", actor=ACTOR)
            count = sum(1 for r in live_replicas(session) if r.node_id == node.id)
            response = convert.node_to_proto(node, count, self._fleet.node_telemetry(node.name))
        self._on_change()
        return response

    # -- events -------------------------------------------------------------------------------------------
    def ListEvents(self, request: pb.ListEventsRequest,
                   context: grpc.ServicerContext) -> pb.ListEventsResponse:
        limit = check_count("limit", request.limit, 0, events_service.MAX_LIMIT) or DEFAULT_EVENT_LIMIT
        with session_scope(self._db) as session:
            events = events_service.list_events(session, after_id=request.after_id,
                                                deployment_name=request.deployment or None, limit=limit,
                                                newest=request.newest)
            return pb.ListEventsResponse(events=[convert.event_to_proto(e) for e in events])

    def WatchEvents(self, request: pb.WatchEventsRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.Event]:
        after = check_count("after_id", request.after_id, 0)
        ended = threading.Event()
        context.add_callback(ended.set)
        while context.is_active() and not self._stopping.is_set():
            with session_scope(self._db) as session:
                events = events_service.list_events(session, after_id=after, limit=events_service.MAX_LIMIT,
                                                    deployment_name=request.deployment or None)
                messages = [convert.event_to_proto(e) for e in events]
            for message in messages:
                yield message
                after = message.id
            if len(messages) < events_service.MAX_LIMIT:
                ended.wait(WATCH_POLL_S)

    # -- tenants ------------------------------------------------------------------------------------------
    def CreateTenant(self, request: pb.CreateTenantRequest,
                     context: grpc.ServicerContext) -> pb.CreateTenantResponse:
        with session_scope(self._db) as session:
            tenant, key = tenants_service.create_tenant(
                session, name=request.name, rpm=request.rpm, tpm=request.tpm,
                monthly_tokens=request.monthly_tokens, quality_opt_out=request.quality_opt_out)
            return pb.CreateTenantResponse(tenant=convert.tenant_to_proto(tenant), api_key=key)

    def UpdateTenant(self, request: pb.UpdateTenantRequest, context: grpc.ServicerContext) -> pb.Tenant:
        with session_scope(self._db) as session:
            tenant = tenants_service.get_tenant(session, request.name)
            if request.HasField("quality_opt_out"):
                tenant = tenants_service.set_quality_opt_out(session, name=request.name,
                                                             opt_out=request.quality_opt_out, actor=ACTOR)
            if request.HasField("cache_sampled"):
                tenant = tenants_service.set_cache_sampled(session, name=request.name,
                                                           cache_sampled=request.cache_sampled, actor=ACTOR)
            return convert.tenant_to_proto(tenant)

    def ListTenants(self, request: pb.ListTenantsRequest,
                    context: grpc.ServicerContext) -> pb.ListTenantsResponse:
        with session_scope(self._db) as session:
            return pb.ListTenantsResponse(
                tenants=[convert.tenant_to_proto(t) for t in tenants_service.list_tenants(session)])

    def GetUsage(self, request: pb.GetUsageRequest, context: grpc.ServicerContext) -> pb.GetUsageResponse:
        since = _since(request) if request.HasField("since") else tenants_service.month_start(utcnow())
        with session_scope(self._db) as session:
            tenant = tenants_service.get_tenant(session, request.tenant)
            rows = tenants_service.usage_summary(session, tenant_id=tenant.id, since=since)
        return pb.GetUsageResponse(rows=[convert.usage_row_to_proto(row) for row in rows])

    # -- security -----------------------------------------------------------------------------------------
    def RotateToken(self, request: pb.RotateTokenRequest,
                    context: grpc.ServicerContext) -> pb.RotateTokenResponse:
        ring = self._tokens.get(request.kind)
        if ring is None:
            raise InvalidArgument(f"kind must be one of {sorted(self._tokens) or ['admin', 'join']}, "
                                  f"got {request.kind!r}")
        if request.finish:
            ring.finish()
            token = ""
        else:
            token = ring.rotate(request.grace_s if request.HasField("grace_s") else DEFAULT_GRACE_S)
        until = ring.previous_valid_until
        if not token or not until:
            message = f"{'rotated the ' + ring.what if token else 'finished rotating the ' + ring.what}; " \
                      "the previous one no longer works"
        else:
            message = f"rotated the {ring.what}; the previous one works until " \
                      f"{datetime.fromtimestamp(until, UTC):%Y-%m-%d %H:%M:%S} UTC"
        with session_scope(self._db) as session:
            events_service.record_event(session, kind="token.rotated" if token else "token.rotation_finished",
                                        actor=ACTOR, message=message,
                                        details={"kind": request.kind, "previous_valid_until": until})
        return pb.RotateTokenResponse(token=token, previous_valid_until=ring.previous_valid_until,
                                      token_file=str(ring.path or ""))

    def ListAudit(self, request: pb.ListAuditRequest, context: grpc.ServicerContext) -> pb.ListAuditResponse:
        limit = check_count("limit", request.limit, 0, audit_service.MAX_LIMIT) or audit_service.DEFAULT_LIMIT
        since = _since(request) if request.HasField("since") else None
        with session_scope(self._db) as session:
            rows = audit_service.list_audit(session, since=since, limit=limit)
            return pb.ListAuditResponse(entries=[convert.audit_to_proto(r) for r in rows])

    # -- model routes -------------------------------------------------------------------------------------
    def SetModelRoute(self, request: pb.SetModelRouteRequest, context: grpc.ServicerContext) -> pb.ModelRoute:
        with session_scope(self._db) as session:
            if request.off:
                if request.companion or request.rule or request.max_in_flight:
                    raise InvalidArgument("off removes the route: give no companion, rule or max_in_flight with it")
                model_routes_service.clear_route(session, deployment=request.deployment, actor=ACTOR)
            else:
                if not request.companion:
                    raise InvalidArgument("a route needs a companion deployment (or off to remove the route)")
                model_routes_service.set_route(session, deployment=request.deployment, companion=request.companion,
                                               rule=request.rule, max_in_flight=request.max_in_flight or None,
                                               actor=ACTOR)
            found = model_routes_service.get_route(session, request.deployment)
            answer = _model_route_to_proto(request.deployment, found)
        self._on_change()
        return answer

    def GetModelRoute(self, request: pb.GetModelRouteRequest, context: grpc.ServicerContext) -> pb.ModelRoute:
        with session_scope(self._db) as session:
            return _model_route_to_proto(request.deployment,
                                         model_routes_service.get_route(session, request.deployment))


def _model_route_to_proto(deployment: str, row: DeploymentRoute | None) -> pb.ModelRoute:
    if row is None:
        return pb.ModelRoute(deployment=deployment)
    return pb.ModelRoute(deployment=deployment, companion=row.companion.name,
                         rule=str(model_routes_service.rule_of(row)), max_in_flight=row.max_in_flight or 0,
                         updated_at=convert.unix(row.updated_at))


def _optional(request: pb.GetPromptAuditRequest, field: str) -> float | None:
    """An optional field's value, None when unset."""
    return getattr(request, field) if request.HasField(field) else None


def _since(request: pb.GetUsageRequest | pb.ListAuditRequest) -> datetime:
    try:
        return datetime.fromtimestamp(request.since, UTC)
    except (OverflowError, ValueError, OSError):
        raise InvalidArgument(f"since must be a time in unix seconds, got {request.since!r}") from None


def _quality_state(session: Session, deployment: Deployment) -> str:
    """The current revision's quality judgement ("ok" until it has one)."""
    current = deployment.current_revision
    judged = quality_service.revision_states(session, deployment.id).get(current.number) if current else None
    return judged.state.value if judged is not None else "ok"
