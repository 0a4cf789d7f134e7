"""Token buckets and the monthly budget, on an injected clock: exact waits, no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmctl.controlplane.errors import ResourceExhausted
from llmctl.controlplane.gateway.ratelimit import (
    RateLimited,
    RateLimiter,
    TenantLimits,
    seconds_to_next_month,
)


class Clock:
    def __init__(self, start: float = datetime(2025, 3, 10, tzinfo=UTC).timestamp()) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def refused(limiter: RateLimiter, tenant: TenantLimits, estimate: int = 0) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        limiter.admit(tenant, estimate)
    return info.value


def test_rpm_refuses_with_the_exact_wait_for_the_next_request():
    clock = Clock()
    limiter = RateLimiter(clock)
    tenant = TenantLimits(1, "acme", rpm=2)
    limiter.admit(tenant, 0)
    limiter.admit(tenant, 0)
    exc = refused(limiter, tenant)
    assert isinstance(exc, ResourceExhausted) and exc.limit == "rpm"
    assert exc.retry_after == pytest.approx(30.0)  # one request refills in 60 s / 2
    assert "2 requests per minute" in exc.message and "'acme'" in exc.message
    clock.now += 29.0
    assert refused(limiter, tenant).retry_after == pytest.approx(1.0)
    clock.now += 1.0
    limiter.admit(tenant, 0)


def test_tpm_charges_the_estimate_up_front_and_settles_to_real_usage():
    clock = Clock()
    limiter = RateLimiter(clock)
    tenant = TenantLimits(1, "acme", tpm=600)
    first = limiter.admit(tenant, 500)
    exc = refused(limiter, tenant, 300)
    assert exc.limit == "tpm" and exc.retry_after == pytest.approx(20.0)  # 200 missing at 10 tokens/s
    limiter.settle(first, 200)  # used far less than estimated: 300 come back
    limiter.admit(tenant, 300)


def test_usage_beyond_the_estimate_drives_the_bucket_negative_and_delays_later_requests():
    clock = Clock()
    limiter = RateLimiter(clock)
    tenant = TenantLimits(1, "acme", tpm=600)
    limiter.settle(limiter.admit(tenant, 100), 1000)  # level 600 - 1000 = -400
    assert refused(limiter, tenant, 100).retry_after == pytest.approx(50.0)  # (100 + 400) / 10 per s
    clock.now += 50.0
    limiter.admit(tenant, 100)


def test_an_estimate_above_the_whole_bucket_waits_for_a_full_bucket_not_forever():
    clock = Clock()
    limiter = RateLimiter(clock)
    tenant = TenantLimits(1, "acme", tpm=600)
    limiter.admit(tenant, 5000)  # full bucket: admitted, level -4400
    assert refused(limiter, tenant, 5000).retry_after == pytest.approx(500.0)  # back to 600


def test_the_longer_of_two_waits_is_reported():
    clock = Clock()
    limiter = RateLimiter(clock)
    tenant = TenantLimits(1, "acme", rpm=60, tpm=60)
    limiter.admit(tenant, 60)
    exc = refused(limiter, tenant, 30)
    assert exc.limit == "tpm" and exc.retry_after == pytest.approx(30.0)


def test_zero_limits_are_unlimited():
    limiter = RateLimiter(Clock())
    tenant = TenantLimits(1, "acme")
    for _ in range(1000):
        limiter.settle(limiter.admit(tenant, 10**6), 10**6)


def test_tenants_have_separate_buckets():
    limiter = RateLimiter(Clock())
    a, b = TenantLimits(1, "a", rpm=1), TenantLimits(2, "b", rpm=1)
    limiter.admit(a, 0)
    refused(limiter, a)
    limiter.admit(b, 0)


def test_a_lowered_limit_applies_without_forgetting_what_was_spent():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.admit(TenantLimits(1, "acme", rpm=10), 0)
    limiter.admit(TenantLimits(1, "acme", rpm=10), 0)
    lowered = TenantLimits(1, "acme", rpm=2)
    assert refused(limiter, lowered).retry_after == pytest.approx(30.0)


def test_monthly_budget_refuses_until_the_first_of_next_month():
    clock = Clock(datetime(2025, 3, 31, 23, 59, tzinfo=UTC).timestamp())
    limiter = RateLimiter(clock)
    tenant = TenantLimits(1, "acme", monthly_tokens=1000)
    assert limiter.budget_stale(1)
    limiter.load_month_usage(1, 990)
    assert not limiter.budget_stale(1)
    limiter.settle(limiter.admit(tenant, 10), 20)  # started under budget, finished over it
    assert limiter.month_usage(1) == 1010
    exc = refused(limiter, tenant)
    assert exc.limit == "monthly_tokens" and exc.retry_after == pytest.approx(60.0)
    assert exc.message.startswith("monthly token budget of 1000 tokens is spent")
    clock.now += 60.0  # April: a fresh month
    assert limiter.budget_stale(1) and limiter.month_usage(1) == 0
    limiter.admit(tenant, 10)


def test_cached_month_usage_goes_stale_after_the_refresh_interval():
    clock = Clock()
    limiter = RateLimiter(clock, budget_refresh_s=30.0)
    limiter.load_month_usage(1, 5)
    clock.now += 29.9
    assert not limiter.budget_stale(1)
    clock.now += 0.1
    assert limiter.budget_stale(1)


def test_seconds_to_next_month_handles_december():
    assert seconds_to_next_month(datetime(2025, 12, 31, 23, 0, tzinfo=UTC).timestamp()) == 3600.0
    assert seconds_to_next_month(datetime(2024, 2, 28, tzinfo=UTC).timestamp()) == 2 * 86400.0
