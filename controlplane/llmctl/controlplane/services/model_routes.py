"""Model routes: a deployment's simple requests go to a cheaper companion deployment (gateway/model_route.py).

One route per deployment. Routes are never chained: a deployment that is some route's companion cannot have a
route of its own, and a deployment with a route cannot be a companion, so the gateway makes at most one hop.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmctl.agent.engine.config import EngineConfig
from llmctl.controlplane.db.models import DeploymentRoute, utcnow
from llmctl.controlplane.errors import Conflict, InvalidArgument
from llmctl.controlplane.gateway.model_route import ModelRoute, RouteRule, parse_rule
from llmctl.controlplane.services import check_count
from llmctl.controlplane.services.deployments import get_deployment
from llmctl.controlplane.services.events import record_event

MAX_IN_FLIGHT = 100_000


def set_route(session: Session, *, deployment: str, companion: str, rule: str, max_in_flight: int | None = None,
              actor: str = "admin") -> DeploymentRoute:
    """Create or replace the deployment's route. max_in_flight: requests per companion replica beyond which it
    is saturated (None: the companion engine's max_num_seqs)."""
    parsed = parse_rule(rule)
    if max_in_flight is not None:
        check_count("max_in_flight", max_in_flight, 1, MAX_IN_FLIGHT)
    main = get_deployment(session, deployment)
    if companion == deployment:
        raise InvalidArgument(f"deployment {deployment!r} cannot be its own companion: name a different deployment")
    small = get_deployment(session, companion)
    if (chained := get_route(session, companion)) is not None:
        raise InvalidArgument(f"{companion!r} routes to {chained.companion.name!r} itself; routes are not chained: "
                              f"turn that route off first (llmctl route {companion} --off)")
    feeding = session.scalars(select(DeploymentRoute).where(DeploymentRoute.companion_id == main.id)).first()
    if feeding is not None:
        raise InvalidArgument(f"{deployment!r} is the companion of {feeding.deployment.name!r}; routes are not "
                              f"chained: turn that route off first (llmctl route {feeding.deployment.name} --off)")
    row = get_route(session, deployment)
    if row is None:
        row = DeploymentRoute(deployment=main, updated_by=actor)
        session.add(row)
    row.companion, row.rule_kind, row.rule_value = small, parsed.kind, parsed.value
    row.max_in_flight, row.updated_at, row.updated_by = max_in_flight, utcnow(), actor
    try:
        session.flush()
    except IntegrityError as e:  # another writer created the route between our read and this insert
        raise Conflict(f"the route of {deployment!r} changed concurrently; run the command again") from e
    record_event(session, kind="deployment.route_set", deployment_name=deployment, actor=actor,
                 message=f"{deployment}: requests matching {parsed} now go to {companion}",
                 details={"companion": companion, "rule": str(parsed), "max_in_flight": max_in_flight})
    return row


def clear_route(session: Session, *, deployment: str, actor: str = "admin") -> bool:
    """Turn the deployment's route off; False when it had none."""
    get_deployment(session, deployment)
    row = get_route(session, deployment)
    if row is None:
        return False
    companion = row.companion.name
    session.delete(row)
    session.flush()
    record_event(session, kind="deployment.route_cleared", deployment_name=deployment, actor=actor,
                 message=f"{deployment}: requests no longer go to {companion}", details={"companion": companion})
    return True


def get_route(session: Session, deployment: str) -> DeploymentRoute | None:
    main = get_deployment(session, deployment)
    return session.scalars(select(DeploymentRoute).where(DeploymentRoute.deployment_id == main.id)).one_or_none()


def rule_of(row: DeploymentRoute) -> RouteRule:
    return RouteRule(row.rule_kind, row.rule_value)


def published(session: Session) -> dict[str, ModelRoute]:
    """Every route as the gateway reads it, with max_in_flight resolved from the companion's engine config."""
    routes: dict[str, ModelRoute] = {}
    for row in session.scalars(select(DeploymentRoute)):
        limit = row.max_in_flight
        if limit is None:
            revision = row.companion.current_revision
            config = revision.engine_config if revision is not None else {}
            limit = int(config.get("max_num_seqs") or EngineConfig.max_num_seqs)
        routes[row.deployment.name] = ModelRoute(row.deployment.name, row.companion.name, rule_of(row), limit)
    return routes

