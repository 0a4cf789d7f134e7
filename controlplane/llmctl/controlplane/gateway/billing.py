"""The gateway's side of the tenant store: API keys, monthly usage for the budget, usage rows (and, beside
each, a traffic row: the request's shape without its content, see gateway/traffic.py).

All SQL runs in worker threads (asyncio.to_thread), one short transaction each, so a slow database slows
only the requests that wait on it, never the event loop relaying other tenants' streams. Usage rows are
written after the answer has gone out; their tasks are kept per tenant so /v1/usage can wait for the
caller's own rows, and shutdown waits for them (DRAIN_TIMEOUT_S at most).

When the database is away (a PostgreSQL restart or failover) the gateway keeps serving: usage rows are
retried until it is back (USAGE_RETRY_S), and keys that authenticated lately still authenticate
(AUTH_FALLBACK_S). docs/reliability.md, "Faults", has what was measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.encoders import jsonable_encoder
from sqlalchemy import exc as sa_exc

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import Conflict, InvalidArgument, Unauthenticated, Unavailable
from llmctl.controlplane.gateway.proxy import Upstream
from llmctl.controlplane.gateway.ratelimit import Admission, RateLimiter, TenantLimits
from llmctl.controlplane.gateway.traffic import (
    PrefixTracker,
    Prompt,
    SharedPrefix,
    SystemPrompt,
    system_prompt,
)
from llmctl.controlplane.services import tenants, traffic

logger = logging.getLogger("llmctl.gateway")

USAGE_RETRY_S = 600.0
"""A usage row that cannot be written because the database is away is retried for this long (then logged
as lost), so a PostgreSQL restart or failover bills every answered request."""
USAGE_RETRY_FIRST_S, USAGE_RETRY_MAX_DELAY_S = 0.2, 5.0
USAGE_READ_WAIT_S = 5.0
"""/v1/usage waits this long for the caller's rows still being written."""
DRAIN_TIMEOUT_S = 10.0
AUTH_FALLBACK_S = 300.0
"""While the database is unavailable, a key that authenticated within this long still authenticates, with the
limits it had then. A key revoked during an outage therefore works until the database is back."""
AUTH_FALLBACK_KEYS = 10_000


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
        # Keys that authenticated lately, by a keyed hash (the key itself is never kept): fingerprint ->
        # (limits, time.monotonic() of the check); the fallback while the database is away.
        self._salt = os.urandom(16)
        self._recent: OrderedDict[bytes, tuple[TenantLimits, float]] = OrderedDict()
        self._auth_fallback = False
        self._usage_waiting = 0  # usage rows retrying until the database is back

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
        """The tenant owning the bearer key; also refreshes its cached monthly usage when that is stale.

        While the database is unavailable, a key that authenticated within AUTH_FALLBACK_S is accepted with
        the limits it had then, so a PostgreSQL restart does not turn the gateway's clients away."""
        key = bearer_key(authorization)
        fingerprint = hashlib.blake2b(key.encode(), key=self._salt, digest_size=16).digest()
        try:
            limits, used = await asyncio.to_thread(self._sql, "check the API key", self._authenticate, key)
        except Unavailable as e:
            known = self._recent.get(fingerprint)
            if known is None or time.monotonic() - known[1] > AUTH_FALLBACK_S:
                raise
            if not self._auth_fallback:
                logger.warning("%s; accepting keys that authenticated in the last %gs until it is back",
                               e.message, AUTH_FALLBACK_S)
            self._auth_fallback = True
            return known[0]
        if self._auth_fallback:
            logger.info("the database checks API keys again")
            self._auth_fallback = False
        self._recent[fingerprint] = (limits, time.monotonic())
        self._recent.move_to_end(fingerprint)
        if len(self._recent) > AUTH_FALLBACK_KEYS:
            self._recent.popitem(last=False)
        if used is not None:
            self.limiter.load_month_usage(limits.tenant_id, used)
        return limits

    def _authenticate(self, key: str) -> tuple[TenantLimits, int | None]:
        with session_scope(self.db_factory) as session:
            tenant = tenants.authenticate(session, key)
            limits = TenantLimits(tenant.id, tenant.name, tenant.rpm, tenant.tpm, tenant.monthly_tokens,
                                  tenant.quality_opt_out, tenant.cache_sampled)
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

        shape: tuple[SharedPrefix, SystemPrompt] | None = None

        def write() -> None:
            nonlocal shape
            if shape is None and tracker is not None:  # once, not per retry: the tracker remembers the prompt
                shape = (tracker.shared_prefix(deployment, prompt, prompt_tokens),
                         system_prompt(prompt, prompt_tokens))
            with session_scope(self.db_factory) as session:
                tenants.record_usage(session, tenant_id=tenant_id, deployment_name=deployment,
                                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                     cost_usd=cost_usd, at=at)
                if shape is not None:
                    shared, system = shape
                    traffic.record(session, deployment_name=deployment, arrived_at=arrived_at,
                                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                   shared_prefix_tokens=shared.tokens, shared_prefix_key=shared.key,
                                   system_prompt_tokens=system.tokens, system_prompt_digest=system.digest)

        def lost(e: BaseException) -> None:
            logger.error("usage of tenant %d on %s (%d+%d tokens) was not recorded: %s", tenant_id, deployment,
                         prompt_tokens, completion_tokens, getattr(e, "message", None) or repr(e))

        async def run() -> None:
            delay, waited, counted = USAGE_RETRY_FIRST_S, 0.0, False
            try:
                while True:
                    try:
                        await asyncio.to_thread(write)
                        return
                    except (Unavailable, Conflict) as e:  # the database is away (a restart) or a race was lost
                        if waited + delay > USAGE_RETRY_S:
                            lost(e)
                            return
                        if not counted:
                            counted = True
                            self._usage_waiting += 1
                            if self._usage_waiting == 1:
                                logger.warning("usage rows wait for the database, retried for up to %gs: %s",
                                               USAGE_RETRY_S, e.message)
                        await asyncio.sleep(delay)
                        waited, delay = waited + delay, min(2 * delay, USAGE_RETRY_MAX_DELAY_S)
                    except Exception as e:  # the answer is already out; losing a row must not break the gateway
                        lost(e)
                        return
            except asyncio.CancelledError as e:  # shutdown gave up waiting for the database
                lost(e)
                raise
            finally:
                if counted:
                    self._usage_waiting -= 1
                    if self._usage_waiting == 0:
                        logger.info("usage rows are written again")

        task = asyncio.get_running_loop().create_task(run())
        pending = self._pending.setdefault(tenant_id, set())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def usage_summary(self, tenant_id: int, *, since: str | None, until: str | None) -> list[dict]:
        """The tenant's own usage per deployment, including the rows of requests that just finished."""
        start, end = _timestamp("since", since), _timestamp("until", until)
        if pending := self._pending.get(tenant_id):
            await asyncio.wait(pending, timeout=USAGE_READ_WAIT_S)  # longer only while the database is away

        def read() -> list[dict]:
            with session_scope(self.db_factory) as session:
                return tenants.usage_summary(session, tenant_id=tenant_id, since=start, until=end)

        return jsonable_encoder(await asyncio.to_thread(self._sql, "read usage", read))

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait for every pending usage row (at shutdown); rows still waiting for the database after
        timeout_s are given up, each logged."""
        tasks = [t for pending in self._pending.values() for t in pending]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)


def _timestamp(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"'{name}' must be an ISO 8601 time like 2025-01-31T00:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
