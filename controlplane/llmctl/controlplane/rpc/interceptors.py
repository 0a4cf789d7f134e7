"""The two checks every gRPC call passes: its token, and how a ControlPlaneError becomes a status.

Servicers raise controlplane.errors and never call context.abort themselves; the error interceptor maps
each error to its grpc_code with the service's message, so clients see NOT_FOUND / ABORTED / ... with
text an operator can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from llmctl.controlplane.errors import ERROR_METADATA, ControlPlaneError
from llmctl.controlplane.tokens import TokenRing

logger = logging.getLogger("llmctl.controlplane.rpc")

ADMIN_SERVICE = "llmctl.v1.AdminService"
AGENT_SERVICE = "llmctl.v1.AgentService"
JOIN_TOKEN_HEADER = "x-llmctl-join-token"
AUTHORIZATION_HEADER = "authorization"

Behavior = Callable[[Any, grpc.ServicerContext], Any]


@dataclass(frozen=True)
class TokenRule:
    """Calls to `service` must carry one of `tokens` in metadata `header` (with `scheme`, e.g. "Bearer ")."""

    service: str
    header: str
    tokens: TokenRing
    scheme: str = ""
    hint: str = ""

    def offered(self, metadata: dict[str, str]) -> str | None:
        value = metadata.get(self.header)
        if value is None or not value.startswith(self.scheme):
            return None
        return value[len(self.scheme):].strip()


def admin_rule(tokens: TokenRing) -> TokenRule:
    return TokenRule(ADMIN_SERVICE, AUTHORIZATION_HEADER, tokens, scheme="Bearer ",
                     hint="pass the admin token (llmctl --admin-token, or $LLMCTL_HOME/admin_token)")


def join_rule(tokens: TokenRing) -> TokenRule:
    return TokenRule(AGENT_SERVICE, JOIN_TOKEN_HEADER, tokens,
                     hint="start the agent with the control plane's join token "
                          "($LLMCTL_HOME/join_token there)")


class AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for a call to a guarded service without its token or with a wrong one."""

    def __init__(self, rules: list[TokenRule]) -> None:
        self._rules = {rule.service: rule for rule in rules}

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        service = details.method.strip("/").split("/")[0]
        rule = self._rules.get(service)
        if rule is None:
            return continuation(details)
        offered = rule.offered(metadata_of(details))
        if rule.tokens.match(offered) is not None:
            return continuation(details)
        # Never the offered value itself: a wrong token is often a mistyped right one, or another secret.
        what = "no token" if offered is None else "a wrong token"
        message = f"{service} refused a call with {what}: {rule.hint}"
        return rewrap(continuation(details), lambda _behavior, streams: _refuse(message, streams))


def metadata_of(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {key: value for key, value in (details.invocation_metadata or ()) if isinstance(value, str)}


def _refuse(message: str, streams: bool) -> Behavior:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if not streams:
        return refuse

    def refuse_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        refuse(request, context)
        yield  # unreachable: makes this a generator, as a streaming handler must be

    return refuse_stream


class ErrorInterceptor(grpc.ServerInterceptor):
    """ControlPlaneError -> its gRPC status code and message, for unary and streaming calls alike."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        return rewrap(continuation(details), _guard)


def status_code(error: ControlPlaneError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.grpc_code, grpc.StatusCode.INTERNAL)


def _guard(behavior: Behavior, streams: bool) -> Behavior:
    if streams:
        def guarded_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except ControlPlaneError as e:
                _abort(context, e)

        return guarded_stream

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except ControlPlaneError as e:
            _abort(context, e)

    return guarded


def _abort(context: grpc.ServicerContext, error: ControlPlaneError) -> None:
    context.set_trailing_metadata(((ERROR_METADATA, type(error).__name__),))
    context.abort(status_code(error), error.message)


def rewrap(handler: Any, wrap: Callable[[Behavior, bool], Behavior]) -> Any:
    """The same method handler with its behavior replaced by wrap(behavior, response_streams)."""
    if handler is None:
        return None  # unknown method: gRPC answers UNIMPLEMENTED
    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **codecs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **codecs)
