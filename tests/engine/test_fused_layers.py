"""kernels.decoder_layers, every decoder layer of a step in one C++ call, against the op-by-op loop."""

from __future__ import annotations

import pytest

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.models import llama
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.kernels import cpu
from tests.factories import make_tiny_llama

PROMPTS = [list(range(3, 3 + n)) for n in (5, 40, 17, 90)]


@pytest.fixture(scope="module")
def tiny_llama_with_bias(tmp_path_factory):
    """q/k/v biases as Qwen2 has them (HF Llama's attention_bias also biases o_proj, which we do not take)."""
    from safetensors.torch import load_file, save_file

    folder = make_tiny_llama(tmp_path_factory.mktemp("tiny-bias"), seed=1, attention_bias=True)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.endswith("o_proj.bias")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


def generate(engine: LLMEngine) -> dict[str, tuple]:
    """Greedy tokens and top-3 logprobs per request, prompts of mixed lengths chunked into shared steps."""
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True,
                                                           logprobs=3))
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = (out.output.token_ids, repr(out.output.logprobs))
    return done


@pytest.mark.parametrize("dtype,quantization,bias", [
    ("float32", None, False), ("bfloat16", None, False), ("bfloat16", None, True),
    ("bfloat16", "int8", True), ("bfloat16", "awq", False),
])
def test_fused_layers_give_the_op_by_op_results_bit_for_bit(tiny_llama, tiny_llama_with_bias, dtype, quantization,
                                                            bias):
    folder = tiny_llama_with_bias if bias else tiny_llama
    # 48 tokens per step: the long prompts prefill in chunks beside the others' decodes (mixed steps).
    engine = LLMEngine(EngineConfig(model=str(folder), dtype=dtype, num_kv_blocks=64, quantization=quantization,
                                    max_num_batched_tokens=48, enable_prefix_caching=False))
    model = engine.runner.model
    if quantization is not None and not cpu.quant_linear_available():
        assert model.decoder_plan is None  # torch's quantized kernels: the op-by-op loop serves
        return
    assert model.decoder_plan is not None
    fused = generate(engine)
    model.decoder_plan = None
    assert generate(engine) == fused
    assert all(len(tokens) == 12 for tokens, _ in fused.values())


def test_no_plan_where_a_layer_cannot_run_fused(tiny_llama, monkeypatch):
    monkeypatch.setenv("LLMCTL_FUSED_LAYERS", "0")
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="bfloat16", num_kv_blocks=32))
    assert engine.runner.model.decoder_plan is None
    monkeypatch.delenv("LLMCTL_FUSED_LAYERS")
    assert llama.decoder_plan(engine.runner.model) is not None
    # An fp32 model quantized to int8 runs torch's kernels, which decoder_layers does not call.
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_kv_blocks=32, quantization="int8"))
    assert engine.runner.model.decoder_plan is None
    assert generate(engine)["r0"][0]


def test_int8_kv_pools_take_the_op_by_op_loop(tiny_llama):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="bfloat16", num_kv_blocks=64, kv_cache_dtype="int8",
                                    max_num_batched_tokens=48, enable_prefix_caching=False))
    model = engine.runner.model
    assert model.decoder_plan is not None  # the model fits; the pools do not, so each step checks
    fused = generate(engine)
    model.decoder_plan = None
    assert generate(engine) == fused
