"""The exact response cache: a repeated request gets the stored answer without reaching a replica.

Key: the tenant, the kind (chat or completion) and the request normalised to canonical JSON (sorted keys)
of every field except the answer-neutral ones (`stream`, `stream_options`, and those the engine server
ignores: `user`, `metadata`, ...); the model is the deployment. An entry also records the revision that
answered, and a lookup only sees entries of revisions the route table serves now, so a new revision never
gets an old revision's answers; when a deployment's routable revisions change, the others' entries go.
Tenants never share entries: the tenant is part of the key.

Only deterministic requests are cached (temperature 0, top_k 1, or a seed), unless the tenant opted in to
caching sampled ones (tenants.cache_sampled). `Cache-Control: no-cache` skips the lookup and stores the
fresh answer; `no-store` does neither. Entries live at most ttl_s and the cache holds at most max_bytes
(least recently used go first); an answer over max_entry_bytes is not kept. One lock guards the maps: the
gateway's event loop and a /metrics scrape from another thread may use the cache at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from llmctl.agent.openai_fields import IGNORED
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.gateway.cached_answer import CachedAnswer

NEUTRAL_FIELDS = frozenset({"stream", "stream_options"}) | IGNORED
"""Request fields left out of the key: they change how an answer is delivered or booked, not the answer."""
_FLOAT_FIELDS = ("temperature", "top_p", "min_p")  # 0 and 0.0 ask for the same thing


@dataclass(frozen=True)
class ResponseCacheConfig:
    """The exact cache's bounds (the gateway has no cache without one)."""

    max_bytes: int = 256 * 2**20
    ttl_s: float = 3600.0
    max_entry_bytes: int = 2**20
    """A larger answer is not kept (one long answer must not flush hundreds of short ones)."""

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_entry_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"response cache {name} must be a positive number of bytes, got {value!r}")
        if isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, int | float) or not self.ttl_s > 0:
            raise InvalidArgument(f"response cache ttl_s must be a positive number of seconds, got {self.ttl_s!r}")


@dataclass(frozen=True)
class CachePlan:
    """What the cache does with one request. key None: it is not cacheable (bypass_reason says why)."""

    key: bytes | None
    lookup: bool
    store: bool
    bypass_reason: str | None = None
    """"no_cache", "no_store" (the client's Cache-Control), "sampled" (not deterministic) or "malformed" (a
    transport field the replica will refuse)."""

    @property
    def header(self) -> str:
        """The x-llmctl-cache value of an answer that was not a hit."""
        return "miss" if self.lookup else "bypass"


def deterministic(body: dict[str, Any]) -> bool:
    """Greedy decoding (temperature 0 or top_k 1) or a seed: the same request gets the same answer. A missing
    temperature means the server's default, 1."""
    temperature, top_k, seed = body.get("temperature"), body.get("top_k"), body.get("seed")
    return (_number(temperature) and temperature == 0) or (_number(top_k) and top_k == 1) or (
        isinstance(seed, int) and not isinstance(seed, bool))


def plan(kind: str, body: dict[str, Any], *, tenant_id: int, cache_sampled: bool,
         cache_control: str | None) -> CachePlan:
    directives = {d.strip().lower() for d in (cache_control or "").split(",")}
    if "no-store" in directives:
        return CachePlan(None, lookup=False, store=False, bypass_reason="no_store")
    if not cache_sampled and not deterministic(body):
        return CachePlan(None, lookup=False, store=False, bypass_reason="sampled")
    key = request_key(kind, body, tenant_id)
    if key is None:  # a malformed transport field: the replica's 400 must not be answered from cache
        return CachePlan(None, lookup=False, store=False, bypass_reason="malformed")
    if "no-cache" in directives:
        return CachePlan(key, lookup=False, store=True, bypass_reason="no_cache")
    return CachePlan(key, lookup=True, store=True)


def request_key(kind: str, body: dict[str, Any], tenant_id: int) -> bytes | None:
    """sha256 of the tenant, the kind and the canonical request; None when a left-out field is malformed (a
    request the replica refuses must not share a key with one it answers)."""
    if body.get("stream") not in (None, True, False):
        return None
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict)
                                    and options.get("include_usage") in (None, True, False)):
        return None
    fields = {k: v for k, v in body.items() if k not in NEUTRAL_FIELDS}
    for name in _FLOAT_FIELDS:
        value = fields.get(name)
        if _number(value) and float(value).is_integer():
            fields[name] = int(value)
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    canonical = json.dumps([tenant_id, kind, fields], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class _Entry:
    deployment: str
    revision: int
    answer: CachedAnswer
    expires: float


class ResponseCache:
    """LRU of answers by (request key, revision), bounded in bytes and age; thread-safe."""

    def __init__(self, config: ResponseCacheConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.clock = config, clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[bytes, int], _Entry] = OrderedDict()  # least recently used first
        self._by_age: OrderedDict[tuple[bytes, int], None] = OrderedDict()  # oldest stored first
        self._revisions: dict[str, frozenset[int]] = {}
        self._bytes: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._evicted: dict[tuple[str, str], int] = {}

    def get(self, key: bytes, deployment: str, revisions: Iterable[int]) -> CachedAnswer | None:
        """The answer stored for the request by one of the revisions the deployment serves now."""
        revisions = frozenset(revisions)
        with self._lock:
            self._serve(deployment, revisions)
            self._expire()
            for revision in sorted(revisions, reverse=True):
                entry = self._entries.get((key, revision))
                if entry is not None:
                    self._entries.move_to_end((key, revision))
                    return entry.answer
        return None

    def put(self, key: bytes, deployment: str, revision: int, answer: CachedAnswer,
            revisions: Iterable[int]) -> bool:
        """Keep an answer of `revision`; False when it is too large or its revision no longer serves."""
        revisions = frozenset(revisions)
        if answer.size > self.config.max_entry_bytes or revision not in revisions:
            return False
        with self._lock:
            self._serve(deployment, revisions)
            self._expire()
            if (old := self._entries.get((key, revision))) is not None:  # keep a shape the new answer lacks
                answer = CachedAnswer(answer.body or old.answer.body, answer.events or old.answer.events,
                                      answer.prompt_tokens, answer.completion_tokens)
            self._remove((key, revision), None)
            self._entries[(key, revision)] = _Entry(deployment, revision, answer, self.clock() + self.config.ttl_s)
            self._by_age[(key, revision)] = None
            self._bytes[deployment] = self._bytes.get(deployment, 0) + answer.size
            self._counts[deployment] = self._counts.get(deployment, 0) + 1
            while sum(self._bytes.values()) > self.config.max_bytes:
                self._remove(next(iter(self._entries)), "size")
        return True

    def stats(self) -> dict[str, tuple[int, int]]:
        """deployment -> (entries, bytes), expired entries dropped first."""
        with self._lock:
            self._expire()
            return {d: (self._counts[d], self._bytes[d]) for d in self._counts}

    def evictions(self) -> dict[tuple[str, str], int]:
        """(deployment, reason) -> entries evicted: "ttl", "size" or "revision"."""
        with self._lock:
            return dict(self._evicted)

    def _serve(self, deployment: str, revisions: frozenset[int]) -> None:
        """Record the revisions the deployment serves; entries of any other revision go."""
        if self._revisions.get(deployment) == revisions:
            return
        self._revisions[deployment] = revisions
        stale = [k for k, e in self._entries.items() if e.deployment == deployment and e.revision not in revisions]
        for k in stale:
            self._remove(k, "revision")

    def _expire(self) -> None:
        now = self.clock()
        while self._by_age:
            oldest = next(iter(self._by_age))
            if self._entries[oldest].expires > now:
                break
            self._remove(oldest, "ttl")

    def _remove(self, key: tuple[bytes, int], reason: str | None) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        del self._by_age[key]
        d = entry.deployment
        self._bytes[d] -= entry.answer.size
        self._counts[d] -= 1
        if not self._counts[d]:
            del self._counts[d], self._bytes[d]
        if reason is not None:
            self._evicted[(d, reason)] = self._evicted.get((d, reason), 0) + 1
