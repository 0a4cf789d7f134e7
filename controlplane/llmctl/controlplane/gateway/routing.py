"""Which replica serves a request: prefix affinity on a consistent-hash ring, gated by load.

Requests whose prompts start alike (a shared system prompt) hash to the same replica, whose prefix cache
then already holds that prompt's KV blocks. Each replica owns `vnodes` points on a ring, so adding or
removing one replica moves only about 1/N of the keys. Affinity yields to load: when the preferred replica
has more than `load_margin` requests in flight beyond the least-loaded candidate, the least-loaded wins,
so a burst of one prefix spreads instead of queueing on one replica.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Collection, Iterable
from typing import Any

from llmctl.controlplane.errors import InvalidArgument, NotFound, Unavailable
from llmctl.controlplane.gateway.routes import Endpoint, RouteTable

VNODES = 64


class ModelNotFound(NotFound):
    """The client named a model (deployment) the gateway does not know."""


def stable_hash(data: str) -> int:
    """64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """Consistent-hash ring over replica ids."""

    def __init__(self, replica_ids: Iterable[int], vnodes: int = VNODES) -> None:
        points = sorted((stable_hash(f"replica-{rid}#{i}"), rid) for rid in set(replica_ids) for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [rid for _, rid in points]

    def walk(self, key: str) -> list[int]:
        """Replica ids in ring order starting at the key's position, each once: preference order for the key."""
        if not self._owners:
            return []
        start = bisect.bisect_left(self._hashes, stable_hash(key)) % len(self._owners)
        order: dict[int, None] = {}
        n = len(self._owners)
        for i in range(n):
            order.setdefault(self._owners[(start + i) % n])
            if len(order) == n:
                break
        return list(order)


class Router:
    """Picks an endpoint of a deployment for one attempt of one request."""

    def __init__(self, routes: RouteTable, *, load_margin: int = 4, vnodes: int = VNODES) -> None:
        if load_margin < 0:
            raise InvalidArgument(f"load_margin must be >= 0, got {load_margin}")
        self.routes, self.load_margin, self.vnodes = routes, load_margin, vnodes
        self._rings: dict[str, tuple[frozenset[int], HashRing]] = {}
        self._lock = threading.Lock()

    def _ring(self, deployment: str, endpoints: list[Endpoint]) -> HashRing:
        ids = frozenset(ep.replica_id for ep in endpoints)
        with self._lock:
            cached = self._rings.get(deployment)
            if cached is None or cached[0] != ids:
                cached = (ids, HashRing(ids, self.vnodes))
                self._rings[deployment] = cached
            return cached[1]

    def check(self, deployment: str) -> list[Endpoint]:
        """The deployment's ready endpoints; NotFound for an unknown model, Unavailable when none is ready."""
        endpoints = self.routes.endpoints(deployment)
        if not endpoints:
            if not self.routes.knows(deployment):
                known = ", ".join(f"'{m}'" for m in self.routes.deployments()) or "none"
                raise ModelNotFound(f"The model '{deployment}' does not exist. Available models: {known}.")
            raise Unavailable(f"deployment '{deployment}' has no ready replicas")
        return endpoints

    def pick(self, deployment: str, prompt_key: str, exclude: Collection[int] = ()) -> Endpoint:
        """The endpoint for this attempt; `exclude` holds replicas this request has already tried."""
        endpoints = self.check(deployment)
        by_id = {ep.replica_id: ep for ep in endpoints if ep.replica_id not in exclude}
        if not by_id:
            raise Unavailable(f"all {len(endpoints)} ready replicas of deployment '{deployment}' failed")
        order = [rid for rid in self._ring(deployment, endpoints).walk(prompt_key) if rid in by_id]
        load = {rid: self.routes.outstanding(rid) for rid in order}
        preferred = order[0]
        # min() keeps the first of equals, so ties among the least loaded also follow ring order.
        least = min(order, key=load.__getitem__)
        if load[preferred] - load[least] > self.load_margin:
            return by_id[least]
        return by_id[preferred]


def prompt_text(kind: str, body: dict[str, Any]) -> str:
    """The rendered prompt whose beginning keys affinity: chat roles and contents, or the completion prompt."""
    if kind == "chat":
        parts = []
        for message in body.get("messages") or []:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                # Only well-formed text parts count; anything else is the replica's to refuse (a 400).
                content = "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
            parts.append(f"{message.get('role', '')}\n{content or ''}\n")
        return "".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, list):
        return " ".join(str(t) for t in prompt)
    return prompt if isinstance(prompt, str) else ""


def prompt_key(kind: str, body: dict[str, Any], chars: int = 256) -> str:
    """The first `chars` characters of the rendered prompt."""
    return prompt_text(kind, body)[:chars]
