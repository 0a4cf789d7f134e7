"""The prompt audit (`llmctl prompts audit`): where a deployment's prompt tokens go, from what the gateway
recorded, never from prompt text (it keeps none).

- By tenant: the usage rows (services/tenants.py), which carry the tenant, the tokens and the cost.
- By system prompt: the traffic rows' system-prompt hash and token estimate (gateway/traffic.py).
- By shared prefix: the traffic rows' shared-prefix hash, the key of the last leading chunk the deployment had
  seen before; requests with one hash reused one prefix, and a prefix cache saves their shared tokens.

Savings are per million requests at the window's mix: a shorter system prompt saves max(0, system tokens -
target) per request (the requests without one save nothing); a prefix cache saves the shared tokens. Dollars
use a price per prompt token: the operator's, else the window's recorded cost per token (usage cost over prompt
plus output tokens). The gateway bills GPU time, and a prompt token costs less of it than an output token, so
that recorded price makes the dollar figures upper bounds.

Everything is summed in SQL (a handful of GROUP BY queries over the window), so a month of traffic is never
loaded row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, exists, func, select
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import Deployment, Tenant, TrafficSample, UsageRecord, utcnow
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.services import check_aware, check_count

DEFAULT_TOP = 5
MAX_TOP = 100
PER = 1_000_000
"""Savings are said per this many requests."""


def audit(session: Session, *, name: str, since: datetime, until: datetime | None = None, top: int = DEFAULT_TOP,
          target_system_tokens: int | None = None, usd_per_mtok: float | None = None) -> dict[str, Any]:
    """The audit of the deployment's requests in [since, until). NotFound for an unknown deployment or a window
    without recorded traffic. target_system_tokens None: half the mean system prompt of the requests that have
    one. usd_per_mtok: dollars per million prompt tokens; None: the window's recorded cost per token."""
    check_count("top", top, 1, MAX_TOP)
    if target_system_tokens is not None:
        check_count("target_system_tokens", target_system_tokens, 0)
    if usd_per_mtok is not None and (isinstance(usd_per_mtok, bool) or not isinstance(usd_per_mtok, int | float)
                                     or not 0 <= usd_per_mtok < float("inf")):
        raise InvalidArgument(f"the price per million prompt tokens must be a number >= 0, got {usd_per_mtok!r}")
    until = until or utcnow()
    check_aware("since", since)
    check_aware("until", until)
    t = TrafficSample
    window = (t.deployment_name == name, t.arrived_at >= since, t.arrived_at < until)
    requests, prompt_tokens, shared_tokens = session.execute(select(
        func.count(t.id), func.coalesce(func.sum(t.prompt_tokens), 0),
        func.coalesce(func.sum(t.shared_prefix_tokens), 0)).where(*window)).one()
    if not requests:
        if not session.scalar(select(exists().where(Deployment.name == name))) \
                and not session.scalar(select(exists().where(t.deployment_name == name))):
            raise NotFound(f"deployment {name!r} not found, and the gateway has recorded no traffic for it")
        raise NotFound(f"deployment {name} has no recorded traffic between {since:%Y-%m-%d %H:%M:%S} and "
                       f"{until:%H:%M:%S} UTC: the gateway records every answered request; send traffic or widen "
                       "--window")
    tenants = tenant_usage(session, name=name, since=since, until=until)
    price, source = usd_per_mtok, "given"
    if price is None:
        price, source = recorded_price(tenants), "recorded"
    return {
        "deployment": name, "since": since, "until": until, "requests": requests,
        "prompt_tokens": int(prompt_tokens), "tenants": tenants,
        "usd_per_mtok": price, "price_source": source if price is not None else None,
        **system_prompts(session, window, requests=requests, top=top, target=target_system_tokens,
                         usd_per_mtok=price),
        **prefixes(session, window, requests=requests, prompt_tokens=int(prompt_tokens),
                   shared_tokens=int(shared_tokens), top=top, usd_per_mtok=price),
    }


def tenant_usage(session: Session, *, name: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Per tenant, most prompt tokens first: requests, prompt tokens and their share, output tokens, cost."""
    u = UsageRecord
    query = (select(Tenant.name, func.count(u.id), func.sum(u.prompt_tokens), func.sum(u.completion_tokens),
                    func.sum(u.cost_usd))
             .join(Tenant, Tenant.id == u.tenant_id)
             .where(u.deployment_name == name, u.at >= since, u.at < until)
             .group_by(Tenant.name))
    found = [{"tenant": tenant, "requests": int(count), "prompt_tokens": int(prompt),
              "completion_tokens": int(completion), "cost_usd": float(cost)}
             for tenant, count, prompt, completion, cost in session.execute(query)]
    total = sum(t["prompt_tokens"] for t in found)
    for t in found:
        t["prompt_share"] = t["prompt_tokens"] / total if total else 0.0
    return sorted(found, key=lambda t: (-t["prompt_tokens"], t["tenant"]))


def recorded_price(tenants: Sequence[dict[str, Any]]) -> float | None:
    """Dollars per million tokens the window's usage rows cost (prompt and output tokens alike); None when
    they hold no tokens or no cost."""
    tokens = sum(t["prompt_tokens"] + t["completion_tokens"] for t in tenants)
    cost = sum(t["cost_usd"] for t in tenants)
    return cost / tokens * PER if tokens and cost > 0 else None


def savings(tokens_per_request: float, usd_per_mtok: float | None) -> dict[str, float | None]:
    """Per million requests: the tokens, and their dollars (None without a price)."""
    tokens = tokens_per_request * PER
    return {"tokens_per_million": tokens, "usd_per_million": None if usd_per_mtok is None
            else tokens * usd_per_mtok / PER}


def system_prompts(session: Session, window: Sequence[ColumnElement[bool]], *, requests: int, top: int,
                   target: int | None, usd_per_mtok: float | None) -> dict[str, Any]:
    """The `top` most used system prompts (hash, requests, share of requests, mean tokens), and what cutting
    every system prompt down to `target` tokens saves."""
    t = TrafficSample
    has_one = (*window, t.system_prompt_hash.is_not(None))
    groups = [(h, int(n), int(tokens)) for h, n, tokens in session.execute(
        select(t.system_prompt_hash, func.count(t.id), func.sum(t.system_prompt_tokens))
        .where(*has_one).group_by(t.system_prompt_hash))]
    used = sorted(({"hash": h, "requests": n, "share": n / requests, "tokens": tokens / n} for h, n, tokens in groups),
                  key=lambda p: (-p["requests"], -p["tokens"], p["hash"]))
    with_system, system_tokens = sum(g[1] for g in groups), sum(g[2] for g in groups)
    if target is None:
        target = round(system_tokens / with_system / 2) if with_system else 0
    cut = case((t.system_prompt_tokens > target, t.system_prompt_tokens - target), else_=0)
    saved = int(session.scalar(select(func.coalesce(func.sum(cut), 0)).where(*has_one)))
    return {
        "system_prompts": used[:top], "distinct_system_prompts": len(used), "system_prompt_requests": with_system,
        "mean_system_tokens": system_tokens / requests, "target_system_tokens": target,
        "shorter_system_prompt": savings(saved / requests, usd_per_mtok),
    }


def prefixes(session: Session, window: Sequence[ColumnElement[bool]], *, requests: int, prompt_tokens: int,
             shared_tokens: int, top: int, usd_per_mtok: float | None) -> dict[str, Any]:
    """The `top` prefixes by prompt tokens a prefix cache saves on them (requests x shared tokens): hash, mean
    shared tokens, requests that reused it and their share; and what caching every shared prefix saves (rows
    recorded before prefixes had hashes count here too)."""
    t = TrafficSample
    has_one = (*window, t.shared_prefix_hash.is_not(None))
    saved = func.sum(t.shared_prefix_tokens)
    ranked = session.execute(select(t.shared_prefix_hash, func.count(t.id), saved).where(*has_one)
                             .group_by(t.shared_prefix_hash).order_by(saved.desc(), t.shared_prefix_hash).limit(top))
    return {
        "prefixes": [{"hash": h, "tokens": int(s) / int(n), "requests": int(n), "share": int(n) / requests,
                      "saved_tokens": int(s)} for h, n, s in ranked],
        "distinct_prefixes": int(session.scalar(select(func.count(func.distinct(t.shared_prefix_hash)))
                                                .where(*has_one))),
        "prefix_saved_tokens": shared_tokens,
        "prefix_saved_fraction": shared_tokens / prompt_tokens if prompt_tokens else 0.0,
        "prefix_cache": savings(shared_tokens / requests, usd_per_mtok),
    }
