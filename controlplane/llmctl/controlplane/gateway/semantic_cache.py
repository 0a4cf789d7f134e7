"""The semantic response cache: a reworded question gets the answer stored for the original, when the
deployment opted in (deployments.semantic_cache_threshold; NULL is off).

It extends the exact cache (response_cache.py) and never stands alone: it keeps no answers, only an index of
vectors pointing at exact-cache entries, so the exact cache's byte bound, TTL and revision binding hold for
what it serves. A request is a candidate when the exact cache would look it up (same plan: deterministic or
the tenant opted in, no Cache-Control: no-cache / no-store) and its last message is a user's plain text (a
completion: its prompt). Its *scope* is the exact key of the request with that text blanked out: tenant,
deployment, endpoint, system prompt, earlier turns and every sampling parameter must match exactly, and only
the last user message may differ. Within a scope the text's all-MiniLM-L6-v2 embedding (embedding.py) is
compared with the stored ones; the most similar at or above the deployment's threshold whose wording passes
the guard (semantic_guard.py: same numbers, no negation, opposite or swapped argument, not a one-word swap)
is a hit.

Near-miss questions (another city, another number, "kilograms to pounds" / "pounds to kilograms") embed
close together as well, so the threshold alone cannot tell them apart; benchmarks/semantic_threshold.py
measures the false hits of threshold and guard on the project's near-miss set
(gateway/data/semantic_pairs.jsonl) and docs/caching.md explains the default.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.gateway.response_cache import request_key
from llmctl.controlplane.gateway.routes import DeploymentSettings

if TYPE_CHECKING:
    import torch  # imported when the first vector is searched: a gateway without the cache never loads it

DEFAULT_THRESHOLD = 0.96
"""Cosine similarity a stored question must reach to answer a new one (`--semantic on`); chosen from
benchmarks/results/semantic-threshold.json, see docs/caching.md."""
MAX_TEXT_CHARS = 4096
"""A longer last message is not embedded (the model reads 256 tokens; the rest would go unseen)."""
_BLANK = "\u0000semantic\u0000"  # stands in for the last user message in a scope key; no client text equals it


@dataclass(frozen=True)
class SemanticQuery:
    """The part of a request the semantic cache compares: `text` within `scope` (everything else, hashed)."""

    scope: bytes
    text: str


def semantic_query(kind: str, body: dict[str, Any], tenant_id: int) -> SemanticQuery | None:
    """The request's scope and its last user message; None when it has none in plain text (a tool result, an
    assistant prefill, multimodal parts): those are only ever answered by the exact cache."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return None
        last = messages[-1]
        text = last.get("content")
        if last.get("role") != "user" or not isinstance(text, str):
            return None
        masked = {**body, "messages": [*messages[:-1], {**last, "content": _BLANK}]}
    else:
        text = body.get("prompt")
        if not isinstance(text, str):
            return None
        masked = {**body, "prompt": _BLANK}
    if not text.strip() or len(text) > MAX_TEXT_CHARS:
        return None
    scope = request_key(kind, masked, tenant_id)
    return SemanticQuery(scope, text) if scope is not None else None


class SemanticTable(DeploymentSettings[float]):
    """Deployment -> similarity threshold of the deployments with the semantic cache on."""

    def threshold(self, deployment: str) -> float | None:
        return self.get(deployment)


@dataclass(frozen=True)
class Neighbour:
    """A stored question similar enough: the exact-cache entry that holds its answer."""

    key: bytes
    revision: int
    similarity: float
    text: str
    """The stored question, for the guard."""


@dataclass
class _Vector:
    deployment: str
    vector: torch.Tensor  # [384], unit length
    text: str
    expires: float


class SemanticIndex:
    """Unit vectors by scope, each naming an exact-cache entry (key, revision); bounded in count and age
    (least recently used go first); thread-safe."""

    def __init__(self, *, max_entries: int = 16384, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise InvalidArgument(f"semantic index max_entries must be >= 1, got {max_entries}")
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[bytes, bytes, int], _Vector] = OrderedDict()  # (scope, key, revision)
        self._scopes: dict[bytes, dict[tuple[bytes, int], None]] = {}
        self._matrices: dict[bytes, tuple[list[tuple[bytes, int]], torch.Tensor]] = {}  # built on first search
        self._revisions: dict[str, frozenset[int]] = {}

    def nearest(self, scope: bytes, vector: torch.Tensor, threshold: float, deployment: str,
                revisions: Iterable[int], limit: int = 4) -> list[Neighbour]:
        """Stored questions of the scope at least `threshold` similar, most similar first, of revisions the
        deployment serves now."""
        import torch

        with self._lock:
            self._serve(deployment, frozenset(revisions))
            self._expire_scope(scope)
            ids = self._scopes.get(scope)
            if not ids:
                return []
            cached = self._matrices.get(scope)
            if cached is None:
                order = list(ids)
                cached = self._matrices[scope] = (order, torch.stack([self._entries[(scope, *i)].vector
                                                                       for i in order]))
            order, matrix = cached
            texts = [self._entries[(scope, *i)].text for i in order]
        similarity = matrix @ vector  # [entries]: cosine, both sides unit length
        best = torch.topk(similarity, min(limit, len(order)))
        return [Neighbour(*order[i], s, texts[i])
                for s, i in zip(best.values.tolist(), best.indices.tolist(), strict=True) if s >= threshold]

    def add(self, scope: bytes, key: bytes, revision: int, deployment: str, vector: torch.Tensor, text: str,
            revisions: Iterable[int]) -> None:
        """Index the question (`text`, embedded as `vector`) of an answer the exact cache now holds under
        (key, revision)."""
        with self._lock:
            self._serve(deployment, frozenset(revisions))
            self._drop((scope, key, revision))
            self._entries[(scope, key, revision)] = _Vector(deployment, vector, text, self.clock() + self.ttl_s)
            self._scopes.setdefault(scope, {})[(key, revision)] = None
            self._matrices.pop(scope, None)
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def touch(self, scope: bytes, neighbour: Neighbour) -> None:
        """A hit: the entry is recently used."""
        with self._lock:
            if (scope, neighbour.key, neighbour.revision) in self._entries:
                self._entries.move_to_end((scope, neighbour.key, neighbour.revision))

    def forget(self, scope: bytes, neighbour: Neighbour) -> None:
        """The exact cache no longer holds the answer (evicted or expired there first)."""
        with self._lock:
            self._drop((scope, neighbour.key, neighbour.revision))

    def counts(self) -> dict[str, int]:
        """deployment -> indexed questions."""
        with self._lock:
            counts: dict[str, int] = {}
            for entry in self._entries.values():
                counts[entry.deployment] = counts.get(entry.deployment, 0) + 1
            return counts

    def _serve(self, deployment: str, revisions: frozenset[int]) -> None:
        if self._revisions.get(deployment) == revisions:
            return
        self._revisions[deployment] = revisions
        for k in [k for k, e in self._entries.items() if e.deployment == deployment and k[2] not in revisions]:
            self._drop(k)

    def _expire_scope(self, scope: bytes) -> None:
        now = self.clock()
        for key, revision in [i for i in self._scopes.get(scope, ()) if self._entries[(scope, *i)].expires <= now]:
            self._drop((scope, key, revision))

    def _drop(self, k: tuple[bytes, bytes, int]) -> None:
        if self._entries.pop(k, None) is None:
            return
        scope = k[0]
        ids = self._scopes[scope]
        del ids[(k[1], k[2])]
        if not ids:
            del self._scopes[scope]
        self._matrices.pop(scope, None)
