"""Every AdminService call that changes something leaves one audit row: who, what, when, how it ended.

The interceptor sits outside the token check, so calls refused for a missing or wrong admin token are
recorded too. The caller is named by its token's fingerprint (which token, not what it is) and its peer
address; requests of the audited calls carry no secrets, and only their target is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import ControlPlaneError
from llmctl.controlplane.rpc.interceptors import ADMIN_SERVICE, Behavior, TokenRule, metadata_of, rewrap
from llmctl.controlplane.services.audit import record_audit
from llmctl.controlplane.tokens import fingerprint

logger = logging.getLogger("llmctl.controlplane.audit")

# rpc -> (what it acts on, the request field naming it, fields worth keeping with it)
WRITES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Deploy": ("deployment", "name", ("model", "replicas")),
    "Rollback": ("deployment", "name", ("to_revision",)),
    "Scale": ("deployment", "name", ("replicas",)),
    "SetAutoscaling": ("deployment", "deployment", ()),
    "DeleteDeployment": ("deployment", "name", ()),
    "DrainNode": ("node", "name", ()),
    "UndrainNode": ("node", "name", ()),
    "CreateTenant": ("tenant", "name", ("rpm", "tpm", "monthly_tokens")),
    "UpdateTenant": ("tenant", "name", ("quality_opt_out", "cache_sampled")),
    "SetQualityReference": ("deployment", "name", ("revision",)),
    "SetSemanticCache": ("deployment", "name", ("threshold",)),
    "StartOptimization": ("deployment", "deployment", ("goal",)),
    "CancelOptimization": ("deployment", "deployment", ("id",)),
    "RotateToken": ("token", "kind", ("grace_s", "finish")),
    "SetModelRoute": ("deployment", "deployment", ("companion", "rule", "off")),
}
READS = frozenset({
    "ListDeployments", "GetDeployment", "ListRevisions", "GetAutoscaling", "ListNodes", "ListEvents",
    "WatchEvents", "ListTenants", "GetUsage", "GetQuality", "ListQualitySamples", "GetOptimization",
    "ListOptimizations", "GetTraffic", "GetPromptAudit", "ListAudit", "GetModelRoute",
})
"""Not audited: they change nothing. Every AdminService rpc is in WRITES or here (a test checks)."""


def target_of(rpc: str, request: Any) -> str:
    """e.g. "deployment/chat replicas=3": the object acted on, then the fields that say how."""
    noun, name_field, extra = WRITES[rpc]
    parts = [f"{noun}/{getattr(request, name_field, '') or '-'}"]
    for field in extra:
        descriptor = request.DESCRIPTOR.fields_by_name[field]
        if descriptor.has_presence and not request.HasField(field):
            continue
        value = getattr(request, field)
        if not descriptor.has_presence and not value and field not in ("replicas",):
            continue  # proto3 defaults (0, "", false) mean "not given" for these fields
        parts.append(f"{field}={value}")
    return " ".join(parts)


class AuditInterceptor(grpc.ServerInterceptor):
    """Writes the audit row of each WRITES call once it has finished (or been refused)."""

    def __init__(self, db: sessionmaker[Session], admin: TokenRule) -> None:
        self._db, self._admin = db, admin

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        service, _, rpc = details.method.strip("/").partition("/")
        handler = continuation(details)
        if service != ADMIN_SERVICE or rpc not in WRITES or handler is None or handler.unary_unary is None:
            return handler
        actor = self._actor(metadata_of(details))
        return rewrap(handler, lambda behavior, _streams: self._audited(behavior, rpc, actor))

    def _actor(self, metadata: dict[str, str]) -> str:
        offered = self._admin.offered(metadata)
        if offered is None:
            return "no token"
        which = self._admin.tokens.match(offered)
        return f"admin-token:{fingerprint(offered)}" if which is not None else "wrong token"

    def _audited(self, behavior: Behavior, rpc: str, actor: str) -> Behavior:
        def audited(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                response = behavior(request, context)
            except BaseException as e:
                code = context.code()
                if code is None:  # not a context.abort: a bug, which gRPC reports as UNKNOWN
                    result, message = "UNKNOWN", f"internal error ({type(e).__name__})"
                else:
                    result, message = code.name, _text(context.details())
                self._record(request, context, rpc, actor, result, message)
                raise
            self._record(request, context, rpc, actor, "ok", "")
            return response

        return audited

    def _record(self, request: Any, context: grpc.ServicerContext, rpc: str, actor: str, result: str,
                message: str) -> None:
        try:
            with session_scope(self._db) as session:
                record_audit(session, actor=actor, peer=context.peer() or "", rpc=rpc,
                             target=target_of(rpc, request), result=result, message=message)
        except ControlPlaneError as e:
            # The database is away (the call itself most likely failed the same way): one line, not a traceback
            # per call while it lasts.
            logger.error("could not write the audit row of %s by %s (result %s): %s", rpc, actor, result,
                         e.message)
        except Exception:
            # The call already happened; losing its row is logged loudly rather than failing the caller.
            logger.exception("could not write the audit row of %s by %s (result %s)", rpc, actor, result)


def _text(details: bytes | str | None) -> str:
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details or ""
