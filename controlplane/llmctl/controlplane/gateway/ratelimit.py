"""Per-tenant admission: requests per minute, tokens per minute, and a monthly token budget.

rpm and tpm are token buckets held in memory by the one gateway process. A bucket holds up to one
minute's worth and refills continuously. A request needs one rpm token and its estimated tokens
(max_tokens + prompt characters / 4) from tpm, charged up front; when it ends the charge is settled to
the real usage, which may drive the bucket negative and so delays the tenant's next requests. A request
whose estimate exceeds the whole tpm capacity is admitted on a full bucket rather than never.

The monthly budget compares the tenant's tokens of this calendar month (UTC) with its limit. The count
comes from the database (the caller loads it when `budget_stale` says so, about every 30 s) and is
incremented locally as requests settle, so a busy tenant is stopped promptly without a query per request.
A request that starts under budget may finish over it; the next one is refused.

Limits of 0 mean unlimited. All times come from one injectable clock (epoch seconds) so tests are exact.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from llmctl.controlplane.errors import ResourceExhausted

BUDGET_REFRESH_S = 30.0


@dataclass(frozen=True)
class TenantLimits:
    """What admission needs to know about a tenant (a plain copy, safe to keep outside a DB session)."""

    tenant_id: int
    name: str
    rpm: int = 0
    tpm: int = 0
    monthly_tokens: int = 0
    quality_opt_out: bool = False
    """The tenant's requests are never sampled for quality scoring."""
    cache_sampled: bool = False
    """The exact response cache may answer this tenant's sampled (non-deterministic) requests too."""


class RateLimited(ResourceExhausted):
    """A refused request; `limit` names what refused it: "rpm", "tpm" or "monthly_tokens"."""

    def __init__(self, message: str, retry_after: float | None, limit: str):
        super().__init__(message, retry_after)
        self.limit = limit


class TokenBucket:
    """Holds up to `per_minute` tokens, refilling at per_minute/60 per second; may go negative."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self._updated = now

    def refill(self, now: float) -> None:
        # A clock that steps backwards must not drain the bucket.
        elapsed = max(0.0, now - self._updated)
        self.level = min(self.capacity, self.level + elapsed * self.capacity / 60.0)
        self._updated = max(self._updated, now)

    def resize(self, per_minute: int) -> None:
        """Take a changed limit without forgetting what has been spent in the last minute."""
        spent = self.capacity - self.level
        self.capacity = float(per_minute)
        self.level = self.capacity - spent

    def wait_for(self, amount: float) -> float:
        """Seconds until the level reaches `amount` (0 if it already has)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity


@dataclass
class Admission:
    """One admitted request: what it was charged, to settle against its real usage."""

    tenant_id: int
    charged_tokens: int


@dataclass
class _TenantState:
    rpm: TokenBucket | None = None
    tpm: TokenBucket | None = None
    month: tuple[int, int] | None = None  # the (year, month) month_tokens counts
    month_tokens: int = 0
    loaded_at: float | None = None  # when month_tokens last came from the database


def seconds_to_next_month(now: float) -> float:
    """Seconds from `now` (epoch) to 00:00 UTC on the first day of the next calendar month."""
    current = datetime.fromtimestamp(now, UTC)
    year, month = (current.year + 1, 1) if current.month == 12 else (current.year, current.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp() - now


def _month_of(now: float) -> tuple[int, int]:
    current = datetime.fromtimestamp(now, UTC)
    return current.year, current.month


class RateLimiter:
    """In-memory rpm/tpm buckets and cached monthly usage for every tenant the gateway has seen."""

    def __init__(self, clock: Callable[[], float] = time.time, budget_refresh_s: float = BUDGET_REFRESH_S):
        self.clock = clock
        self.budget_refresh_s = budget_refresh_s
        self._tenants: dict[int, _TenantState] = {}
        self._lock = threading.Lock()

    def _state(self, tenant_id: int) -> _TenantState:
        return self._tenants.setdefault(tenant_id, _TenantState())

    def budget_stale(self, tenant_id: int) -> bool:
        """Whether the caller should load the tenant's monthly usage from the database before admitting."""
        now = self.clock()
        with self._lock:
            state = self._state(tenant_id)
            return (state.loaded_at is None or state.month != _month_of(now)
                    or now - state.loaded_at >= self.budget_refresh_s)

    def load_month_usage(self, tenant_id: int, tokens: int) -> None:
        """The tenant's tokens this month as the database has them now."""
        now = self.clock()
        with self._lock:
            state = self._state(tenant_id)
            state.month, state.month_tokens, state.loaded_at = _month_of(now), int(tokens), now

    def month_usage(self, tenant_id: int) -> int:
        """The cached tokens of this month (database count plus what settled since)."""
        now = self.clock()
        with self._lock:
            state = self._state(tenant_id)
            return state.month_tokens if state.month == _month_of(now) else 0

    def admit(self, tenant: TenantLimits, estimated_tokens: int) -> Admission:
        """Admit one request or raise RateLimited with the seconds until it would be admitted."""
        now = self.clock()
        estimate = max(0, int(estimated_tokens))
        with self._lock:
            state = self._state(tenant.tenant_id)
            if state.month != _month_of(now):
                state.month, state.month_tokens = _month_of(now), 0
            if tenant.monthly_tokens and state.month_tokens >= tenant.monthly_tokens:
                raise RateLimited(
                    f"monthly token budget of {tenant.monthly_tokens} tokens is spent "
                    f"({state.month_tokens} used this month); it renews on the 1st (UTC)",
                    seconds_to_next_month(now), "monthly_tokens",
                )
            state.rpm = self._bucket(state.rpm, tenant.rpm, now)
            state.tpm = self._bucket(state.tpm, tenant.tpm, now)
            waits = {}
            if state.rpm is not None:
                waits["rpm"] = state.rpm.wait_for(1.0)
            if state.tpm is not None:
                waits["tpm"] = state.tpm.wait_for(min(float(estimate), state.tpm.capacity))
            limit, wait = max(waits.items(), key=lambda kv: kv[1], default=("", 0.0))
            if wait > 0:
                what = (f"{tenant.rpm} requests per minute" if limit == "rpm"
                        else f"{tenant.tpm} tokens per minute (this request needs about {estimate})")
                raise RateLimited(
                    f"rate limit of {what} reached for tenant '{tenant.name}'; retry in {math.ceil(wait)} s",
                    wait, limit,
                )
            if state.rpm is not None:
                state.rpm.level -= 1.0
            if state.tpm is not None:
                state.tpm.level -= estimate
        return Admission(tenant.tenant_id, estimate)

    def settle(self, admission: Admission, used_tokens: int) -> None:
        """Replace the up-front charge with the tokens the request really used (prompt + completion)."""
        now = self.clock()
        used = max(0, int(used_tokens))
        with self._lock:
            state = self._state(admission.tenant_id)
            if state.tpm is not None:
                state.tpm.refill(now)
                state.tpm.level = min(state.tpm.capacity, state.tpm.level + admission.charged_tokens - used)
            if state.month != _month_of(now):
                state.month, state.month_tokens = _month_of(now), 0
            state.month_tokens += used

    @staticmethod
    def _bucket(bucket: TokenBucket | None, per_minute: int, now: float) -> TokenBucket | None:
        if per_minute <= 0:
            return None
        if bucket is None:
            return TokenBucket(per_minute, now)
        bucket.refill(now)
        if bucket.capacity != per_minute:
            bucket.resize(per_minute)
        return bucket
