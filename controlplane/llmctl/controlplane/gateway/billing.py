"""The gateway's side of the tenant store: API keys, monthly usage for the budget, usage rows (and, beside
each, a traffic row: the request's shape without its content, see gateway/traffic.py).

All SQL runs in worker threads (asyncio.to_thread), one short transaction each, so a slow database slows
only the requests that wait on it, never the event loop relaying other tenants' streams. Usage rows are
written after the answer has gone out; their tasks are kept per tenant so /v1/usage can wait for the
caller's own rows, and shutdown waits for all of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.encoders import jsonable_encoder
from sqlalchemy import exc as sa_exc

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument, Unauthenticated, Unavailable
from llmctl.controlplane.gateway.proxy import Upstream
from llmctl.controlplane.gateway.ratelimit import Admission, RateLimiter, TenantLimits
from llmctl.controlplane.gateway.traffic import PrefixTracker, Prompt
from llmctl.controlplane.services import tenants, traffic

logger = logging.getLogger("llmctl.gateway")


@dataclass
class Bill:
    """What finishing a proxied request needs to account for it."""

    tenant: TenantLimits
    deployment: str
    admission: Admission
    upstream: Upstream
    arrived: float  # time.perf_counter() when the gateway received the request
    prompt_estimate: int  # prompt tokens billed when the replica never reported usage
    arrived_at: datetime | None = None  # the same moment on the wall clock, for the traffic row
    prompt: Prompt | None = None  # what the prefix tracker chunks (text or token ids); never stored


def bearer_key(authorization: str | None) -> str:
    """The API key of an `Authorization: Bearer <key>` header."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("Missing API key: send it as the header 'Authorization: Bearer <key>'.")
    return key.strip()


class TenantStore:
    """Tenant lookups and usage writes against the control plane's database, off the event loop."""

    def __init__(self, db_factory: Any, limiter: RateLimiter, traffic: PrefixTracker | None = None) -> None:
        """traffic: with it, each usage row comes with a traffic row (the request's shape) in its transaction."""
        self.db_factory, self.limiter, self.traffic = db_factory, limiter, traffic
        self._pending: dict[int, set[asyncio.Task[None]]] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.limiter.clock(), UTC)

    def _sql(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Unavailable as e:
            raise Unavailable(f"cannot {what}: {e.message}") from e
        except sa_exc.SQLAlchemyError as e:
            reason = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
            raise Unavailable(f"cannot {what}: the control plane's database failed ({reason})") from e

    async def authenticate(self, authorization: str | None) -> TenantLimits:
        """The tenant owning the bearer key; also refreshes its cached monthly usage when that is stale."""
        key = bearer_key(authorization)
        limits, used = await asyncio.to_thread(self._sql, "check the API key", self._authenticate, key)
        if used is not None:
            self.limiter.load_month_usage(limits.tenant_id, used)
        return limits

    def _authenticate(self, key: str) -> tuple[TenantLimits, int | None]:
        with session_scope(self.db_factory) as session:
            tenant = tenants.authenticate(session, key)
            limits = TenantLimits(tenant.id, tenant.name, tenant.rpm, tenant.tpm, tenant.monthly_tokens,
                                  tenant.quality_opt_out)
            used = None
            if limits.monthly_tokens and self.limiter.budget_stale(limits.tenant_id):
                used = tenants.tokens_used_in_month(session, tenant_id=limits.tenant_id, now=self._now())
            return limits, used

    def record_usage_later(self, tenant_id: int, *, deployment: str, prompt_tokens: int,
                           completion_tokens: int, cost_usd: float, arrived_at: datetime | None = None,
                           prompt: Prompt | None = None) -> None:
        """Write one usage row in a worker thread after the response; failures are logged, not raised. With a
        tracker, the arrival time and the prompt (only hashed, in the worker thread) add a traffic row."""
        at = self._now()
        tracker = self.traffic if arrived_at is not None and prompt is not None else None

        def write() -> None:
            shared = 0
            if tracker is not None:
                shared = tracker.shared_prefix_tokens(deployment, prompt, prompt_tokens)
            with session_scope(self.db_factory) as session:
                tenants.record_usage(session, tenant_id=tenant_id, deployment_name=deployment,
                                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                     cost_usd=cost_usd, at=at)
                if tracker is not None:
                    traffic.record(session, deployment_name=deployment, arrived_at=arrived_at,
                                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                   shared_prefix_tokens=shared)

        async def run() -> None:
            try:
                await asyncio.to_thread(self._sql, "record usage", write)
            except Exception as e:  # the answer is already out; losing a row must not break the gateway
                logger.error("usage of tenant %d on %s (%d+%d tokens) was not recorded: %s", tenant_id,
                             deployment, prompt_tokens, completion_tokens, e)

        task = asyncio.get_running_loop().create_task(run())
        pending = self._pending.setdefault(tenant_id, set())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def usage_summary(self, tenant_id: int, *, since: str | None, until: str | None) -> list[dict]:
        """The tenant's own usage per deployment, including the rows of requests that just finished."""
        start, end = _timestamp("since", since), _timestamp("until", until)
        if pending := self._pending.get(tenant_id):
            await asyncio.gather(*pending)

        def read() -> list[dict]:
            with session_scope(self.db_factory) as session:
                return tenants.usage_summary(session, tenant_id=tenant_id, since=start, until=end)

        return jsonable_encoder(await asyncio.to_thread(self._sql, "read usage", read))

    async def drain(self) -> None:
        """Wait for every pending usage row (at shutdown)."""
        tasks = [t for pending in self._pending.values() for t in pending]
        if tasks:
            await asyncio.gather(*tasks)


def _timestamp(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"'{name}' must be an ISO 8601 time like 2025-01-31T00:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
