"""AdminService under arbitrary field values: every answer is OK or a deliberate status, never UNKNOWN or
INTERNAL (an exception the servicer did not map), and the server keeps serving.

Hypothesis draws each request's fields (any text, int32/int64 extremes, NaN and infinities, JSON that is not
an object or names unknown fields) with a fixed seed, against a real control plane on a loopback port.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, running_control_plane

DELIBERATE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
"""What a bad request may get. UNKNOWN and INTERNAL mean an unmapped exception; UNAVAILABLE a dead server."""
PROPERTY_SEED = 16
EXAMPLES = 50

# Protobuf strings are UTF-8, so lone surrogates cannot be sent at all; everything else can.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
names = st.one_of(texts, st.sampled_from(["chat", "a", "x" * 300, "-bad", "Chat", "tiny", ""]))
int32s = st.integers(-2**31, 2**31 - 1)
int64s = st.integers(-2**63, 2**63 - 1)
doubles = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | doubles | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=8)
engine_fields = st.sampled_from(["max_num_seqs", "dtype", "max_model_len", "kv_cache_dtype", "quantization",
                                 "block_size", "speculative", "nonsense"])
engine_configs = st.one_of(
    texts,  # mostly not JSON at all
    json_values.map(json.dumps),  # JSON, mostly not an object
    st.dictionaries(engine_fields, json_values, max_size=3).map(json.dumps),  # known fields, wild values
)
policies = st.builds(pb.AutoscalePolicy, min_replicas=int32s, max_replicas=int32s, target_queue=doubles,
                     target_kv_usage=st.none() | doubles, scale_up_window_s=doubles, scale_down_window_s=doubles,
                     max_step=int32s, mode=st.one_of(texts, st.sampled_from(["on", "advisory", "off"])))


def deploys(name: st.SearchStrategy[str], model: st.SearchStrategy[str],
            config: st.SearchStrategy[str]) -> st.SearchStrategy[pb.DeployRequest]:
    return st.builds(pb.DeployRequest, name=name, model=model, engine_config_json=config,
                     replicas=st.none() | int32s, quality_sample_rate=st.none() | doubles,
                     quality_auto_rollback=st.none() | st.booleans(), quality_threshold=st.none() | doubles)


REQUESTS = {
    # Wild everything, or a plausible name, model and config with wild numbers, so that some deploys succeed.
    "Deploy": deploys(names, names, engine_configs) | deploys(
        st.sampled_from(["chat", "svc-1"]), st.sampled_from(["m", "tiny"]),
        st.just("{}") | st.dictionaries(engine_fields, json_values, max_size=2).map(json.dumps)),
    "Scale": st.builds(pb.ScaleRequest, name=names, replicas=int32s),
    "Rollback": st.builds(pb.RollbackRequest, name=names, to_revision=st.none() | int32s),
    "GetDeployment": st.builds(pb.GetDeploymentRequest, name=names),
    "ListEvents": st.builds(pb.ListEventsRequest, after_id=int64s, deployment=names, limit=int32s,
                            newest=st.booleans()),
    "CreateTenant": st.builds(pb.CreateTenantRequest, name=names, rpm=int64s, tpm=int64s, monthly_tokens=int64s,
                              quality_opt_out=st.booleans()),
    "GetUsage": st.builds(pb.GetUsageRequest, tenant=names, since=st.none() | doubles),
    "SetAutoscaling": st.builds(pb.SetAutoscalingRequest, deployment=names, policy=st.none() | policies),
    "DrainNode": st.builds(pb.DrainNodeRequest, name=names),
}


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    home: Path = tmp_path_factory.mktemp("admin-properties")
    with running_control_plane(home) as plane, Admin(plane.grpc_address, plane.admin_token) as client:
        client.deploy("chat", model="m", replicas=0)  # something for Scale/Rollback/GetDeployment to find
        yield client
        assert client.ListDeployments(pb.ListDeploymentsRequest()) is not None, "the server must keep serving"


@pytest.mark.parametrize("rpc", sorted(REQUESTS))
def test_arbitrary_fields_get_a_deliberate_status(admin: Admin, rpc: str):
    @seed(PROPERTY_SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(request=REQUESTS[rpc])
    def check(request) -> None:
        try:
            getattr(admin, rpc)(request)
        except grpc.RpcError as exc:
            assert exc.code() in DELIBERATE, f"{rpc}({request}) -> {exc.code()}: {exc.details()}"

    check()
