"""The OpenAI-compatible front door: tenants, rate limits, budgets, usage, prefix-affinity routing.

The reconciler publishes ready replicas into a RouteTable; build_gateway_app serves them.
"""

from __future__ import annotations

from llmctl.controlplane.gateway.routes import Endpoint, RouteTable

__all__ = ["Endpoint", "RouteTable", "build_gateway_app"]


def __getattr__(name: str):
    # The app pulls in FastAPI, httpx and the DB layer; the reconciler only needs the route table.
    if name == "build_gateway_app":
        from llmctl.controlplane.gateway.app import build_gateway_app

        return build_gateway_app
    raise AttributeError(name)
