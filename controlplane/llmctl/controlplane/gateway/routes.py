"""Where each deployment can be reached: the reconciler writes ready replicas here, the gateway reads them.

The table lives in memory and is shared between the reconciler's thread and the gateway's event loop, so
every access takes one lock. It also counts the requests the gateway has in flight per replica, which the
router reads to avoid piling a burst onto one replica.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

from llmctl.controlplane.errors import InvalidArgument

T = TypeVar("T")


class DeploymentSettings(Generic[T]):
    """Deployment -> one per-deployment setting of the gateway (quality sample rate, semantic cache threshold,
    model route): the reconciler replaces the whole map from SQL each pass, the gateway reads it per request."""

    def __init__(self, values: dict[str, T] | None = None) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, T] = dict(values or {})

    def replace(self, values: dict[str, T]) -> None:
        with self._lock:
            self._values = dict(values)

    def get(self, deployment: str) -> T | None:
        with self._lock:
            return self._values.get(deployment)


@dataclass(frozen=True)
class Endpoint:
    """One ready replica of a deployment, reachable at `url` (scheme://host:port, no trailing /v1)."""

    replica_id: int
    url: str
    deployment: str
    revision: int


class RouteTable:
    """Thread-safe map deployment -> ready endpoints, plus in-flight request counts per replica."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._outstanding: dict[int, int] = {}
        self._holds: frozenset[str] = frozenset()

    def set_endpoints(self, deployment: str, endpoints: list[Endpoint]) -> None:
        """Replace the ready endpoints of `deployment` (an empty list: known, but nothing ready)."""
        seen: set[int] = set()
        for ep in endpoints:
            if ep.deployment != deployment:
                raise InvalidArgument(
                    f"endpoint of replica {ep.replica_id} belongs to deployment '{ep.deployment}', "
                    f"not '{deployment}'"
                )
            if ep.replica_id in seen:
                raise InvalidArgument(f"replica {ep.replica_id} is listed twice for deployment '{deployment}'")
            seen.add(ep.replica_id)
        normalized = tuple(Endpoint(ep.replica_id, ep.url.rstrip("/"), ep.deployment, ep.revision)
                           for ep in endpoints)
        with self._lock:
            self._endpoints[deployment] = normalized

    def remove(self, deployment: str) -> None:
        """Forget a deleted deployment; its model name becomes unknown (404) rather than unready (503)."""
        with self._lock:
            self._endpoints.pop(deployment, None)

    def endpoints(self, model_name: str) -> list[Endpoint]:
        """The ready endpoints of a deployment (clients send the deployment name as `model`); [] if none."""
        with self._lock:
            return list(self._endpoints.get(model_name, ()))

    def set_holds(self, deployments: set[str]) -> None:
        """The deployments whose requests wait at the gateway while none of their replicas is ready (those an
        autoscaler will start a replica for: scale from zero) instead of failing at once."""
        with self._lock:
            self._holds = frozenset(deployments)

    def holds(self, model_name: str) -> bool:
        with self._lock:
            return model_name in self._holds

    def knows(self, model_name: str) -> bool:
        """Whether the deployment exists, ready or not."""
        with self._lock:
            return model_name in self._endpoints

    def deployments(self) -> list[str]:
        """Every known deployment, including those without a ready replica."""
        with self._lock:
            return sorted(self._endpoints)

    def models(self) -> list[str]:
        """Deployments that can serve right now (at least one ready endpoint)."""
        with self._lock:
            return sorted(name for name, eps in self._endpoints.items() if eps)

    def outstanding(self, replica_id: int) -> int:
        """Requests the gateway has sent to this replica that have not finished yet."""
        with self._lock:
            return self._outstanding.get(replica_id, 0)

    def acquire(self, replica_id: int) -> int:
        """Count one more request in flight to the replica; returns the new count (including this one)."""
        with self._lock:
            count = self._outstanding.get(replica_id, 0) + 1
            self._outstanding[replica_id] = count
            return count

    def release(self, replica_id: int) -> None:
        """One request to the replica has ended (successfully or not)."""
        with self._lock:
            count = self._outstanding.get(replica_id, 0) - 1
            assert count >= 0, f"replica {replica_id} released more requests than it acquired"
            if count:
                self._outstanding[replica_id] = count
            else:
                del self._outstanding[replica_id]
