"""Model routing: a deployment may send its "simple" requests to a cheaper companion deployment.

A route names the companion and one rule that says which requests are simple: a short prompt
(`max-prompt-tokens=N`, on the gateway's estimate of one token per 4 characters), a regular expression
searched in the user's last message or the completion prompt (`regex=...`), or the classifier trained on
the project's labelled set (`classifier`, see route_classifier.py). Routes live in SQL
(deployment_routes); the reconciler publishes them here each pass, as it does quality sample rates.

The decision comes after the tenant's limits and before the exact cache: a rule reads only the request,
so the same request always goes the same way, and its cached answer lives under the deployment that
computed it. A matched request goes to the companion unless the companion has no ready replica or every one
of its replicas already has `max_in_flight` requests from this gateway (saturated); and if every companion
replica then fails before its first byte (connect error, 5xx), the main deployment serves it. A client never
sees the companion's failure. Routes are not followed twice: a companion's own route is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from llmctl.controlplane.errors import InvalidArgument, Unavailable
from llmctl.controlplane.gateway.routes import DeploymentSettings, RouteTable
from llmctl.controlplane.gateway.routing import ModelNotFound, prompt_text

RULE_KINDS = ("max-prompt-tokens", "regex", "classifier")
MAX_RULE_CHARS = 1000
MAX_PROMPT_TOKENS_LIMIT = 1_000_000
MATCH_CHARS = 8192
"""A regex or the classifier reads at most this many characters of the text (a pattern must not spend
seconds on a 100k-character prompt)."""

Outcome = Literal["companion", "main", "fallback"]
U = TypeVar("U")


@dataclass(frozen=True)
class RouteRule:
    """Which requests are simple enough for the companion. `value` is the rule's parameter as written."""

    kind: str
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind == "regex":
            object.__setattr__(self, "_pattern", re.compile(self.value))

    def __str__(self) -> str:
        return self.kind if self.kind == "classifier" else f"{self.kind}={self.value}"

    def matches(self, kind: str, body: dict[str, Any]) -> bool:
        """Whether the request (kind "chat" or "completion") goes to the companion."""
        if self.kind == "max-prompt-tokens":
            from llmctl.controlplane.gateway.wire import estimate_prompt_tokens

            return estimate_prompt_tokens(kind, body) <= int(self.value)
        text = asked_text(kind, body)[:MATCH_CHARS]
        if self.kind == "regex":
            return self._pattern.search(text) is not None  # type: ignore[attr-defined]
        from llmctl.controlplane.gateway.route_classifier import default_classifier

        return default_classifier().is_simple(text)


def parse_rule(text: str) -> RouteRule:
    """`max-prompt-tokens=200`, `regex=(?i)^(hi|thanks)`, `classifier`; InvalidArgument says what to fix."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("a route needs a rule: max-prompt-tokens=N, regex=PATTERN or classifier")
    if len(text) > MAX_RULE_CHARS:
        raise InvalidArgument(f"the rule is {len(text)} characters long; at most {MAX_RULE_CHARS}")
    kind, eq, value = text.partition("=")
    kind = kind.strip().lower().replace("_", "-")
    if kind not in RULE_KINDS:
        raise InvalidArgument(f"unknown rule {kind!r}: use max-prompt-tokens=N, regex=PATTERN or classifier")
    if kind == "classifier":
        if eq:
            raise InvalidArgument("the classifier rule takes no value: write just 'classifier'")
        return RouteRule(kind)
    if not eq or not value:
        raise InvalidArgument(f"the {kind} rule needs a value: {kind}=" + ("N" if kind != "regex" else "PATTERN"))
    if kind == "max-prompt-tokens":
        value = value.strip()
        if not value.isdigit() or not 1 <= int(value) <= MAX_PROMPT_TOKENS_LIMIT:
            raise InvalidArgument(f"max-prompt-tokens must be an integer between 1 and {MAX_PROMPT_TOKENS_LIMIT}, "
                                  f"got {value!r}")
        return RouteRule(kind, str(int(value)))
    try:
        return RouteRule(kind, value)
    except re.error as e:
        raise InvalidArgument(f"the regex {value!r} does not compile: {e}") from None


def asked_text(kind: str, body: dict[str, Any]) -> str:
    """What the user asked: the last user message of a chat (its text parts), else the completion prompt."""
    if kind != "chat":
        return prompt_text(kind, body)
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            return prompt_text("chat", {"messages": [{"content": message.get("content")}]}).strip("\n")
    return ""


@dataclass(frozen=True)
class ModelRoute:
    """deployment's simple requests go to companion; max_in_flight per companion replica (0: no limit)."""

    deployment: str
    companion: str
    rule: RouteRule
    max_in_flight: int = 0


@dataclass(frozen=True)
class Decision:
    """Where one request goes first. target: the deployment to try; outcome as counted if it serves."""

    route: ModelRoute
    target: str
    outcome: Outcome
    reason: str = ""
    """Why a matched request stays on the main deployment: no_ready_replica, saturated, companion_failed."""


class ModelRouteTable(DeploymentSettings[ModelRoute]):
    """Deployment -> its route."""

    def replace(self, routes: dict[str, ModelRoute]) -> None:
        if any(route.rule.kind == "classifier" for route in routes.values()):
            from llmctl.controlplane.gateway.route_classifier import default_classifier

            default_classifier()  # trained here, on the publisher's thread, not on a request's path
        super().replace(routes)


def decide(route: ModelRoute | None, kind: str, body: dict[str, Any], routes: RouteTable) -> Decision | None:
    """Where the request goes first (None: its deployment has no route)."""
    if route is None:
        return None
    if not route.rule.matches(kind, body):
        return Decision(route, route.deployment, "main")
    endpoints = routes.endpoints(route.companion)
    if not endpoints:
        return Decision(route, route.deployment, "fallback", "no_ready_replica")
    if route.max_in_flight and all(routes.outstanding(ep.replica_id) >= route.max_in_flight for ep in endpoints):
        return Decision(route, route.deployment, "fallback", "saturated")
    return Decision(route, route.companion, "companion")


async def open_routed(decision: Decision | None, main: str, open_one: Callable[[str], Awaitable[U]]
                      ) -> tuple[U, Decision | None]:
    """The upstream answer for the request: from the decision's target, or from `main` when every companion
    replica failed before answering (the returned decision then says fallback, companion_failed)."""
    if decision is None or decision.target == main:
        return await open_one(main), decision
    try:
        return await open_one(decision.target), decision
    except (Unavailable, ModelNotFound):
        pass  # outside the except: a failure of main must not chain the companion's
    return await open_one(main), Decision(decision.route, main, "fallback", "companion_failed")


def routed_body(body: dict[str, Any], companion: str) -> dict[str, Any]:
    """The client's request as the companion's replicas expect it: they serve under the companion's name."""
    return {**body, "model": companion}
