"""Recorded traffic in SQL: one row per answered gateway request (its shape, never its content), the summary
`llmctl traffic` shows, and the synthetic bench workload `llmctl optimize --from-traffic` measures with.

The synthetic workload keeps the window's distributions: per-request (prompt, output) lengths drawn from the
recorded pairs, the median shared prefix in front of every prompt, and the window's arrival rate. A prompt
keeps its recorded length: its own part is the recorded prompt minus the workload's shared prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import statistics
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import Deployment, TrafficSample, utcnow
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.services import check_aware, check_count
from llmctl.controlplane.services.tenants import api_key_secret

MIN_REQUESTS = 8
"""Fewer requests than this in the window make no workload: their distributions say too little."""
MAX_REQUESTS = 64
"""Requests in a synthetic workload (fewer when the window saw fewer)."""
MAX_ARRIVAL_SPAN_S = 120.0
"""A synthetic workload's arrivals span at most this long: slower traffic is sped up to fit, so that one
measurement of a quiet deployment does not take an hour (the report says by how much)."""
MAX_WINDOW_S = 31 * 24 * 3600.0
HASH_CHARS = 16
"""Stored hashes are 64 bits: enough that two system prompts of one deployment never collide in practice."""


def record(session: Session, *, deployment_name: str, arrived_at: datetime, prompt_tokens: int,
           completion_tokens: int, shared_prefix_tokens: int, shared_prefix_key: bytes | None = None,
           system_prompt_tokens: int = 0, system_prompt_digest: bytes | None = None) -> TrafficSample:
    """The shape of one answered request. The gateway's digests (gateway/traffic.py) are stored HMAC'd with the
    control plane's secret, so that a copy of the database alone cannot test guesses of a system prompt."""
    check_count("prompt_tokens", prompt_tokens, 0)
    check_count("completion_tokens", completion_tokens, 0)
    check_count("shared_prefix_tokens", shared_prefix_tokens, 0, prompt_tokens)
    check_count("system_prompt_tokens", system_prompt_tokens, 0, prompt_tokens)
    check_aware("arrived_at", arrived_at)
    row = TrafficSample(deployment_name=deployment_name, arrived_at=arrived_at, prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens, shared_prefix_tokens=shared_prefix_tokens,
                        shared_prefix_hash=_keyed(session, b"prefix", shared_prefix_key),
                        system_prompt_tokens=system_prompt_tokens,
                        system_prompt_hash=_keyed(session, b"system", system_prompt_digest))
    session.add(row)
    session.flush()
    return row


def _keyed(session: Session, kind: bytes, digest: bytes | None) -> str | None:
    """16 hex digits of HMAC-SHA256(secret, kind + digest); None for None."""
    if digest is None:
        return None
    return hmac.new(api_key_secret(session), kind + b":" + digest, hashlib.sha256).hexdigest()[:HASH_CHARS]


def purge_expired(session: Session, *, before: datetime) -> int:
    """Delete rows of requests that arrived before `before` (the retention period); returns how many."""
    done = session.execute(delete(TrafficSample).where(TrafficSample.arrived_at < before))
    return done.rowcount or 0


def samples(session: Session, *, name: str, since: datetime, until: datetime | None = None) -> list[Any]:
    """The deployment's requests that arrived in [since, until), oldest first, as plain rows (arrived_at,
    prompt_tokens, completion_tokens, shared_prefix_tokens), lighter than ORM objects for a busy window.
    NotFound when the name is neither a deployment nor has any row (a deleted deployment's traffic stays
    readable until it is purged)."""
    check_aware("since", since)
    check_aware("until", until)
    t = TrafficSample
    query = select(t.arrived_at, t.prompt_tokens, t.completion_tokens, t.shared_prefix_tokens).where(
        t.deployment_name == name, t.arrived_at >= since)
    if until is not None:
        query = query.where(t.arrived_at < until)
    rows = list(session.execute(query.order_by(t.arrived_at, t.id)))
    if not rows and not session.scalar(select(exists().where(Deployment.name == name))) \
            and not session.scalar(select(exists().where(TrafficSample.deployment_name == name))):
        raise NotFound(f"deployment {name!r} not found, and the gateway has recorded no traffic for it")
    return rows


def window_start(window_s: float, now: datetime | None = None) -> datetime:
    if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not 0 < window_s <= MAX_WINDOW_S:
        raise InvalidArgument(f"the traffic window must be a positive number of seconds up to {MAX_WINDOW_S:g} "
                              f"(31 days), got {window_s!r}")
    return (now or utcnow()) - timedelta(seconds=window_s)


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    """mean, p50, p95, max (nearest-rank percentiles), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])

    return {"mean": statistics.fmean(ordered), "p50": rank(0.5), "p95": rank(0.95), "max": float(ordered[-1])}


def _gaps(rows: Sequence[Any]) -> list[float]:
    return [(b.arrived_at - a.arrived_at).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]


def arrival_rate(rows: Sequence[Any]) -> float | None:
    """Arrivals per second between the first and the last request (None: fewer than two, or all at once)."""
    gaps = _gaps(rows)
    span = sum(gaps)
    return len(gaps) / span if span > 0 else None


def summary(session: Session, *, name: str, since: datetime, until: datetime | None = None,
            max_requests: int = MAX_REQUESTS, seed: int = 0) -> dict[str, Any]:
    """What the window's traffic looks like, and the synthetic workload made from it (None, with the reason
    in workload_error, when the window holds too little; workload_speedup says how much faster than recorded
    its arrivals come when the recorded ones were too slow to fit MAX_ARRIVAL_SPAN_S)."""
    until = until or utcnow()
    rows = samples(session, name=name, since=since, until=until)
    prompt_total = sum(r.prompt_tokens for r in rows)
    workload, error = None, None
    try:
        workload = workload_from(rows, name=name, window_s=(until - since).total_seconds(),
                                 max_requests=max_requests, seed=seed)
    except InvalidArgument as e:
        error = e.message
    rate = arrival_rate(rows)
    speedup = None
    if workload is not None and rate is not None and workload["request_rate"] != "inf":
        speedup = workload["request_rate"] / rate if workload["request_rate"] > rate * 1.001 else None
    return {
        "deployment": name, "since": since, "until": until, "requests": len(rows),
        "first_at": rows[0].arrived_at if rows else None, "last_at": rows[-1].arrived_at if rows else None,
        "request_rate": rate,
        "prompt_tokens": _stats([r.prompt_tokens for r in rows]),
        "completion_tokens": _stats([r.completion_tokens for r in rows]),
        "shared_prefix_tokens": _stats([r.shared_prefix_tokens for r in rows]),
        "interarrival_s": _stats(_gaps(rows)),
        "shared_fraction": sum(r.shared_prefix_tokens for r in rows) / prompt_total if prompt_total else None,
        "workload": workload, "workload_error": error, "workload_speedup": speedup,
    }


def workload_from(rows: Sequence[Any], *, name: str, window_s: float, max_requests: int = MAX_REQUESTS,
                  seed: int = 0) -> dict[str, Any]:
    """synthetic_workload(rows), refusing (InvalidArgument) a window with fewer than MIN_REQUESTS requests."""
    if len(rows) < MIN_REQUESTS:
        raise InvalidArgument(f"deployment {name} saw only {len(rows)} request{'s' if len(rows) != 1 else ''} in "
                              f"the last {window_s / 60:g} minutes ({MIN_REQUESTS} needed); send traffic or give "
                              "--workload FILE")
    return synthetic_workload(rows, max_requests=max_requests, seed=seed)


def window_workload(session: Session, *, name: str, window_s: float, seed: int = 0) -> dict[str, Any]:
    """The synthetic workload of the deployment's last `window_s` seconds of traffic."""
    now = utcnow()
    rows = samples(session, name=name, since=window_start(window_s, now), until=now)
    return workload_from(rows, name=name, window_s=window_s, seed=seed)


def synthetic_workload(rows: Sequence[Any], max_requests: int = MAX_REQUESTS, seed: int = 0) -> dict[str, Any]:
    """A bench workload spec (optimizer/options.py's keys) with the recorded distributions: min(len(rows),
    max_requests) (prompt, output) length pairs drawn without replacement from the recorded ones (seeded),
    shared_prefix_len the median shared prefix, and request_rate the recorded arrival rate ("inf" when every
    request arrived at once), raised where needed so the arrivals span at most MAX_ARRIVAL_SPAN_S. Each pair's
    input length excludes the shared prefix, so prefix + input is the recorded prompt length."""
    if not rows:
        raise InvalidArgument("no recorded traffic to make a workload of")
    check_count("max_requests", max_requests, 1, 10_000)
    rng = random.Random(seed)
    picked = rng.sample(list(rows), min(len(rows), max_requests))
    shared = int(statistics.median(r.shared_prefix_tokens for r in rows))
    lengths = [[max(1, r.prompt_tokens - shared), max(1, r.completion_tokens)] for r in picked]
    rate: float | str = "inf"
    recorded = arrival_rate(rows)
    if recorded is not None:
        rate = round(max(recorded, (len(picked) - 1) / MAX_ARRIVAL_SPAN_S), 6)
    inputs, outputs = [p[0] for p in lengths], [p[1] for p in lengths]
    return {"requests": len(picked), "input_len": [min(inputs), max(inputs)],
            "output_len": [min(outputs), max(outputs)], "shared_prefix_len": shared, "request_rate": rate,
            "seed": seed, "lengths": lengths}
