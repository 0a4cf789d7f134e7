"""Scale from zero: a request for an autoscaled deployment with no ready replica waits here for one.

The wait is bounded twice: at most `max_held` requests per deployment wait at once, and each waits at most
`timeout_s`; past either bound the client gets a clear 503 with Retry-After instead of a hung connection.
The number waiting is the autoscaler's gateway-queue signal (a deployment at zero replicas has no other), and
`on_hold` wakes it, so a first replica is asked for at once rather than at its next tick. Deployments that are
not autoscaled still answer 503 at once when nothing is ready: nobody would start a replica for them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from llmctl.controlplane.errors import Unavailable
from llmctl.controlplane.gateway.routes import RouteTable

POLL_S = 0.1


class ColdStartHold:
    def __init__(self, routes: RouteTable, *, max_held: int = 100, timeout_s: float = 300.0,
                 on_hold: Callable[[str], None] | None = None) -> None:
        if max_held < 0 or not timeout_s > 0:
            raise ValueError(f"need max_held >= 0 and timeout_s > 0, got {max_held} and {timeout_s}")
        self.routes, self.max_held, self.timeout_s, self._on_hold = routes, max_held, timeout_s, on_hold
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()  # the autoscaler reads held() from its own thread

    def held(self, deployment: str) -> int:
        """Requests waiting now for a first ready replica of `deployment`."""
        with self._lock:
            return self._held.get(deployment, 0)

    async def wait_ready(self, deployment: str) -> None:
        """Return once `deployment` has a ready replica (at once if it has one, or is not autoscaled)."""
        if self.routes.endpoints(deployment) or not self.routes.holds(deployment):
            return
        with self._lock:
            held = self._held.get(deployment, 0)
            if held >= self.max_held:
                raise Unavailable(
                    f"deployment '{deployment}' is starting its first replica and {held} requests already wait "
                    "for it; retry later", retry_after=min(self.timeout_s, 30.0))
            self._held[deployment] = held + 1
        try:
            if self._on_hold is not None:
                self._on_hold(deployment)
            deadline = time.monotonic() + self.timeout_s
            while not self.routes.endpoints(deployment):
                if time.monotonic() >= deadline or not self.routes.holds(deployment):
                    raise Unavailable(
                        f"no replica of deployment '{deployment}' became ready within {self.timeout_s:g}s; "
                        "retry later", retry_after=min(self.timeout_s, 30.0))
                await asyncio.sleep(POLL_S)
        finally:
            with self._lock:
                left = self._held[deployment] - 1
                if left:
                    self._held[deployment] = left
                else:
                    del self._held[deployment]
