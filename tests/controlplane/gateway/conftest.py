"""Real engine servers as replicas, and real gateways in front of them, each under uvicorn on a loopback port.

Replicas are shared by the whole gateway suite (they hold no state a test depends on, apart from their
metrics counters, which tests read as differences). Each test gets its own gateway on its own database
(the store's `db_factory`), so limits, usage and metrics never leak between tests.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
from llmctl.controlplane.services import tenants
from tests.factories import make_tiny_llama
from tests.factories import serve_app as _serve

CONTEXT = 4096  # long enough that a held-open stream is still generating when the test looks at it


@pytest.fixture(scope="session")
def serve() -> Callable[..., Any]:
    """The context manager that runs an app under uvicorn on a loopback port (yields its URL)."""
    return _serve


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tiny_4k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-gateway"), max_position_embeddings=CONTEXT)


@pytest.fixture(scope="session")
def replicas(tiny_4k: Path) -> Iterator[SimpleNamespace]:
    """Two live engine servers of the same model, a third serving it as "flaky", one (also "flaky") whose
    engine loop never started, so every generation is a 500, and a closed port. Replicas serve under their
    deployment's name: the gateway passes the client's body, model name included, through unchanged."""
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    config = EngineConfig(model=str(tiny_4k), dtype="float32", max_model_len=CONTEXT, num_kv_blocks=1024)
    engines = [AsyncEngine.from_config(config) for _ in range(4)]
    with _serve(build_app(engines[0], "tiny")) as a, _serve(build_app(engines[1], "tiny")) as b, \
            _serve(build_app(engines[2], "flaky")) as flaky, \
            _serve(build_app(engines[3], "flaky"), lifespan="off") as broken:
        yield SimpleNamespace(live=[a, b], flaky=flaky, broken=broken, closed=closed_port_url())
    asyncio.run(engines[3].stop())  # its thread waits for a start that never came


@pytest.fixture
def routes(replicas: SimpleNamespace) -> RouteTable:
    """tiny: the two live replicas (ids 1, 2); empty: none ready; flaky: a closed port (3), the broken
    replica (4) and a live one (5)."""
    table = RouteTable()
    table.set_endpoints("tiny", [Endpoint(i + 1, url, "tiny", 1) for i, url in enumerate(replicas.live)])
    table.set_endpoints("empty", [])
    table.set_endpoints("flaky", [Endpoint(3, replicas.closed, "flaky", 1), Endpoint(4, replicas.broken, "flaky", 1),
                                  Endpoint(5, replicas.flaky, "flaky", 1)])
    return table


@pytest.fixture
def make_gateway(db_factory: Any, routes: RouteTable) -> Iterator[Callable[..., SimpleNamespace]]:
    """Start a gateway over `routes` and the test's database; keyword arguments go to build_gateway_app."""
    from llmctl.controlplane.gateway.app import build_gateway_app

    with ExitStack() as stack:
        def start(**kwargs: Any) -> SimpleNamespace:
            kwargs.setdefault("routes", routes)
            kwargs.setdefault("db_factory", db_factory)
            app = build_gateway_app(**kwargs)
            url = stack.enter_context(_serve(app))
            return SimpleNamespace(url=url, app=app, gw=app.state.gateway, routes=app.state.gateway.routes)

        yield start


@pytest.fixture
def gateway(make_gateway: Callable[..., SimpleNamespace]) -> SimpleNamespace:
    return make_gateway()


@pytest.fixture
def make_tenant(db_factory: Any) -> Callable[..., str]:
    """Create a tenant (keyword limits as create_tenant takes them) and return its API key."""

    def create(name: str, **limits: int) -> str:
        with session_scope(db_factory) as session:
            _, key = tenants.create_tenant(session, name=name, **limits)
        return key

    return create
