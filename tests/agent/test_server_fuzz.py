"""`llmctl serve`'s OpenAPI, fuzzed by schemathesis against a real uvicorn on a loopback port.

Every route gets schema-valid and schema-invalid requests (fixed seed, bounded examples). Each answer must be
no 5xx, carry a status, content type, headers and body the schema documents, and the server must still be
healthy afterwards. The model is a tiny random Llama with a 128-token context, so any generation is short.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.factories import make_tiny_llama, serve_app

FUZZ_SEED = 16
FUZZ_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, unsupported_method]
"""schemathesis' checks of one answer. Not positive_data_acceptance: a schema-valid body may still be
refused (a prompt longer than the context, top_p 7), and that is a documented 400."""


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory):
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.http_guard import uvicorn_limits
    from llmctl.agent.server import build_app

    path = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-fuzz"), max_position_embeddings=128)
    engine = AsyncEngine.from_config(EngineConfig(model=str(path), dtype="float32", max_model_len=128,
                                                  num_kv_blocks=64))
    with serve_app(build_app(engine, "tiny"), **uvicorn_limits(read_timeout_s=5)) as url:
        yield url
        assert httpx.get(url + "/health").status_code == 200, "the server must survive the fuzzing"


@pytest.fixture(scope="module")
def served_schema(fuzzed_server: str):
    return schemathesis.openapi.from_url(fuzzed_server + "/openapi.json")


schema = schemathesis.pytest.from_fixture("served_schema")


@schema.parametrize()
@seed(FUZZ_SEED)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_answer_matches_the_openapi_schema(case):
    case.call_and_validate(checks=CHECKS, timeout=30)
