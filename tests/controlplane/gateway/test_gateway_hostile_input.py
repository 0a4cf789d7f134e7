"""The gateway against hostile input: its OpenAPI fuzzed by schemathesis, then each bad input class, against a
real gateway and replica, each under uvicorn on a loopback port.

As for `llmctl serve` (tests/agent/test_server_fuzz.py): fixed seed, bounded examples, every answer no 5xx and
as the schema documents it, the gateway healthy afterwards. Requests carry a tenant's key (and some, from
schemathesis, none or a wrong one); the replica is a tiny random Llama with a 128-token context. The bad input
classes are those of tests/agent/test_server_hostile_input.py, with the gateway's own parsing in front.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings

from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
from tests.agent.test_server_fuzz import CHECKS, FUZZ_EXAMPLES, FUZZ_SEED
from tests.agent.test_server_hostile_input import (
    ANSWER_WITHIN_S,
    BODY_LIMIT,
    READ_TIMEOUT_S,
    assert_error,
    post_raw,
)
from tests.factories import make_tiny_llama, serve_app

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def short_replica(tmp_path_factory: pytest.TempPathFactory):
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    path = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-gateway-fuzz"), max_position_embeddings=128)
    engine = AsyncEngine.from_config(EngineConfig(model=str(path), dtype="float32", max_model_len=128,
                                                  num_kv_blocks=64))
    with serve_app(build_app(engine, "tiny")) as url:
        yield url


@pytest.fixture
def fuzzed_gateway(short_replica: str, db_factory, make_tenant):
    from llmctl.agent.http_guard import uvicorn_limits
    from llmctl.controlplane.gateway.app import build_gateway_app

    routes = RouteTable()
    routes.set_endpoints("tiny", [Endpoint(1, short_replica, "tiny", 1)])
    routes.set_endpoints("empty", [])
    key = make_tenant("fuzz")
    app = build_gateway_app(routes=routes, db_factory=db_factory, max_body_bytes=BODY_LIMIT)
    with serve_app(app, **uvicorn_limits(read_timeout_s=READ_TIMEOUT_S)) as url:
        yield SimpleNamespace(url=url, key=key)
        assert httpx.get(url + "/health").status_code == 200, "the gateway must survive the fuzzing"


@pytest.fixture
def gateway_schema(fuzzed_gateway: SimpleNamespace):
    return schemathesis.openapi.from_url(fuzzed_gateway.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@seed(FUZZ_SEED)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_answer_matches_the_openapi_schema(case, fuzzed_gateway):
    # Requests carry the tenant's key (schemathesis' own header cases still send none or garbage), and bodies
    # without a model name the replica's, so they get past the gateway to the replica.
    case.headers = {"Authorization": f"Bearer {fuzzed_gateway.key}", **(case.headers or {})}
    if isinstance(case.body, dict) and case.body.get("model") is None:
        case.body["model"] = "tiny"
    case.call_and_validate(checks=CHECKS, timeout=30)


def bearer(gateway: SimpleNamespace) -> dict[str, str]:
    return {"authorization": f"Bearer {gateway.key}"}


def test_an_oversized_body_is_413(fuzzed_gateway: SimpleNamespace):
    big = b'{"model": "tiny", "prompt": "' + b"a" * BODY_LIMIT + b'"}'
    r, took = post_raw(fuzzed_gateway.url, "/v1/completions", big, **bearer(fuzzed_gateway))
    assert_error(r, 413, says=f"larger than the {BODY_LIMIT} bytes")
    assert took < ANSWER_WITHIN_S


@pytest.mark.parametrize("raw, says", [
    pytest.param(b"[" * 100_000, "nested too deeply", id="100k-open-brackets"),  # was a RecursionError and a 500
    pytest.param(b'{"model": "tiny", "prompt": "\xff\xfe"}', "Malformed JSON", id="invalid-utf8"),
    pytest.param(b'{"model": "tiny", "prompt": "hi", "max_tokens": 1000000000000}', "maximum context length",
                 id="huge-max-tokens"),
    pytest.param(b'{"model": "tiny", "prompt": "hi", "n": 1000000000}', "Only n=1", id="huge-n"),
])
def test_bad_bodies_are_400(fuzzed_gateway: SimpleNamespace, raw: bytes, says: str):
    r, took = post_raw(fuzzed_gateway.url, "/v1/completions", raw, **bearer(fuzzed_gateway))
    assert_error(r, 400, says=says)
    assert took < ANSWER_WITHIN_S


@pytest.mark.parametrize("authorized", [True, False])
def test_a_slow_body_is_cut_off_after_the_read_timeout(fuzzed_gateway: SimpleNamespace, authorized: bool):
    # Unauthorized, the gateway answers 401 before reading the body; the trickle is cut off all the same.
    host, port = fuzzed_gateway.url.removeprefix("http://").split(":")
    auth = f"authorization: Bearer {fuzzed_gateway.key}\r\n".encode() if authorized else b""
    with socket.create_connection((host, int(port)), timeout=ANSWER_WITHIN_S) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n" + auth
                     + b"content-length: 1000\r\n\r\n{")
        try:
            while time.monotonic() - start < ANSWER_WITHIN_S:
                sock.sendall(b" ")
                time.sleep(0.1)
        except OSError:
            pass
        took = time.monotonic() - start
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 " if authorized else b"HTTP/1.1 401 "), answer
    assert READ_TIMEOUT_S <= took < READ_TIMEOUT_S + 1.5, took
