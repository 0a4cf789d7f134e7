"""An AWQ checkpoint made by `llmctl quantize` is served by `llmctl serve` (a real process) over HTTP."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.agent.engine.quantization.checkpoint import quantize_to_folder
from tests.factories import serve_process


@pytest.fixture(scope="module")
def awq_server(tiny_llama, tmp_path_factory):
    folder = quantize_to_folder(str(tiny_llama), "awq", tmp_path_factory.mktemp("awq-serve") / "m").out
    with serve_process(str(folder), "--served-model-name", "tiny-awq", "--dtype", "float32", "--num-kv-blocks",
                       "64", timeout_s=90) as url:
        yield url


def test_awq_model_answers_chat_through_the_openai_client(awq_server):
    import openai

    client = openai.OpenAI(base_url=awq_server + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="tiny-awq", messages=[{"role": "user", "content": "Hello!"}], max_tokens=6, temperature=0
    )
    assert reply.usage.completion_tokens == 6 and reply.choices[0].message.content


def test_metrics_report_the_quantized_weight_and_kv_bytes(awq_server):
    text = httpx.get(awq_server + "/metrics").text
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    # tiny Llama, 2 layers: qkv 64->128, o 64->64, gate_up 64->256, down 128->64 at 4 bits, group 64.
    weights = 2 * (64 * 128 + 64 * 64 + 64 * 256 + 128 * 64)
    # Served in float32 on CPU (prepacked): 0.5 byte per weight plus an fp32 (scale, zero) per group of 64.
    assert values["llmctl_model_linear_weight_bytes"] <= (0.5 + 8 / 64) * weights < 0.32 * 2 * weights
    assert values["llmctl_kv_cache_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # K+V, 2 layers, 2 heads, fp32
    assert values["llmctl_kv_blocks_total"] == 64
    assert values["llmctl_kv_cache_bytes"] == 64 * 16 * values["llmctl_kv_cache_bytes_per_token"]  # the whole pool
