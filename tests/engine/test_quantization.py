"""Weight quantization: formats, error bounds, memory, checkpoints, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.errors import InvalidRequest, UnsupportedModel
from llmctl.agent.engine.models.linear import AWQLinear, DenseLinear, Int8Linear
from llmctl.agent.engine.quantization import QuantSpec, awq, resolve_spec
from llmctl.agent.engine.quantization.checkpoint import quantize_to_folder
from llmctl.agent.engine.quantization.int8 import int8_linear
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.kernels import quant_cpu
from llmctl.kernels.quant_reference import dequantize_awq, pack_awq, quantize_int8_per_channel, unpack_awq


def engine(model, dtype: str = "float32", **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), dtype=dtype, num_kv_blocks=128, **kw))


def greedy(eng: LLMEngine, prompts: list[str], n: int = 12) -> list[list[int]]:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    return [o.output.token_ids for o in eng.generate(prompts, params)]


@pytest.fixture(scope="module")
def awq_folder(tiny_llama, tmp_path_factory) -> Path:
    return quantize_to_folder(str(tiny_llama), "awq", tmp_path_factory.mktemp("q") / "awq").out


def test_int8_round_trip_error_is_at_most_half_a_step_per_channel():
    w = torch.randn(48, 96) * torch.rand(48, 1) * 3
    q, scales = quantize_int8_per_channel(w)
    err = (q.float() * scales[:, None] - w).abs()
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert (err <= scales[:, None] / 2 + 1e-6).all()
    assert (err.amax(1) > 0).all(), "random weights cannot all be exact"


def test_rtn4_round_trip_error_is_at_most_half_a_step_per_group():
    w = torch.randn(32, 128) * 0.2 + torch.linspace(-0.3, 0.3, 128)
    q, zeros, scales = awq.quantize_4bit(w, 64)
    assert q.min() >= 0 and q.max() <= 15 and zeros.min() >= 0 and zeros.max() <= 15
    deq = awq.fake_quantize_4bit(w, 64).view(32, 2, 64)
    step = scales.float()[..., None]
    # Half a step from rounding, plus the zero point's own rounding (at most half a step more).
    assert ((deq - w.view(32, 2, 64)).abs() <= step + 1e-5).all()
    assert ((deq - w.view(32, 2, 64)).abs().mean() < step.mean() / 2)


def test_awq_layer_packs_in_the_documented_gemm_layout_bit_for_bit():
    # One output row block of 8 columns; column j holds the value j + 1 in every input row.
    intweight = torch.arange(1, 9, dtype=torch.int32).repeat(4, 1)  # [in=4, out=8]
    zeros = torch.full((1, 8), 8, dtype=torch.int32)
    qweight, qzeros = pack_awq(intweight, zeros)
    # Nibble p holds logical column (0, 2, 4, 6, 1, 3, 5, 7)[p]: values 1,3,5,7,2,4,6,8 from bit 0 up.
    assert qweight.tolist() == [[0x86427531 - (1 << 32)]] * 4
    assert qzeros.tolist() == [[0x88888888 - (1 << 32)]]
    # A layer built from a dense one stores exactly what its own dequantization reproduces.
    dense = DenseLinear(64, 16)
    with torch.no_grad():
        dense.weight.normal_(0, 0.1)
    layer = awq.awq_linear(dense, 32)
    q, z = unpack_awq(layer.qweight, layer.qzeros)
    ref_q, ref_z, ref_s = awq.quantize_4bit(dense.weight.data, 32)
    assert torch.equal(q, ref_q.T) and torch.equal(z, ref_z.T) and torch.equal(layer.scales, ref_s.T)
    deq = dequantize_awq(layer.qweight, layer.qzeros, layer.scales, 32).float().T
    assert torch.allclose(deq, awq.fake_quantize_4bit(dense.weight.data, 32), atol=1e-3)


def test_group_size_auto_picks_the_largest_that_divides_every_layer(tiny_llama, smollm2_path):
    from llmctl.agent.engine.loader import load_model_config

    assert resolve_spec("awq", "auto", load_model_config(smollm2_path)).group_size == 64  # hidden 576
    assert resolve_spec("rtn4", None, load_model_config(tiny_llama)).group_size == 64  # hidden 64
    with pytest.raises(InvalidRequest, match="group size 128 does not divide .*576"):
        resolve_spec("awq", 128, load_model_config(smollm2_path))
    with pytest.raises(InvalidRequest, match="int8, awq, rtn4"):
        resolve_spec("gptq", "auto", load_model_config(tiny_llama))


def test_quantized_linears_shrink_memory_for_real(smollm2_path):
    # bfloat16, as served: the CPU runtime layouts keep scales (and AWQ zeros) in the activation dtype.
    float_engine = engine(smollm2_path, dtype="bfloat16")
    fp16_linear = 2 * float_engine.info.linear_params
    assert float_engine.info.linear_weight_bytes == fp16_linear
    for method, bound in (("int8", 0.52), ("rtn4", 0.30)):
        eng = engine(smollm2_path, dtype="bfloat16", quantization=method)
        assert eng.info.linear_weight_bytes <= bound * fp16_linear, method
        # No float copy of the quantized weights stays behind: the whole model shrinks by the difference.
        saved = float_engine.info.linear_weight_bytes - eng.info.linear_weight_bytes
        assert eng.info.model_bytes <= float_engine.info.model_bytes - 0.95 * saved, method
        layers = [m for m in eng.runner.model.modules() if isinstance(m, (DenseLinear, Int8Linear, AWQLinear))]
        kind = Int8Linear if method == "int8" else AWQLinear
        assert layers and all(isinstance(m, kind) for m in layers)
        del eng


def test_int8_weights_keep_greedy_output_close_on_smollm2(smollm2_path):
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    ref = greedy(engine(smollm2_path), prompts)
    got = greedy(engine(smollm2_path, quantization="int8"), prompts)
    same = sum(a == b for r, g in zip(ref, got, strict=True) for a, b in zip(r, g, strict=True))
    assert same / sum(map(len, ref)) >= 0.8


def test_awq_search_reduces_the_layer_error_of_salient_channels():
    torch.manual_seed(0)
    x = torch.randn(512, 128)
    x[:, :4] *= 40  # a few channels with huge activations, as real models have
    w = torch.randn(64, 128) * 0.05
    mean_abs = x.abs().mean(0)
    s, r = awq.search_scales(x, mean_abs, w, 64)
    ref = x @ w.T
    plain = (x @ awq.fake_quantize_4bit(w, 64).T - ref).pow(2).mean()
    scaled = (x @ (awq.fake_quantize_4bit(w * s, 64) / s).T - ref).pow(2).mean()
    assert r > 0 and scaled < 0.7 * plain


def test_saved_awq_checkpoint_reloads_with_identical_outputs(tiny_llama, awq_folder):
    config = json.loads((awq_folder / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": None, "llmctl_method": "awq",
    }
    from safetensors import safe_open

    with safe_open(str(awq_folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.q_proj.qweight").dtype == torch.int32
        assert f.get_tensor("model.layers.0.self_attn.q_proj.scales").dtype == torch.float16
    assert "model.layers.0.self_attn.q_proj.weight" not in names
    at_load = engine(tiny_llama, quantization="awq")  # same calibration text and samples as the folder
    reloaded = engine(awq_folder)
    assert reloaded.info.quantization == "awq-g64" == at_load.info.quantization
    tokens = [reloaded.tokenize("The quick brown fox jumps over the lazy dog")]
    assert torch.equal(at_load.score(tokens)[0], reloaded.score(tokens)[0])
    prompts = ["hello world", "a b c"]
    assert greedy(at_load, prompts) == greedy(reloaded, prompts)


def test_saved_int8_checkpoint_reloads_with_identical_outputs(tiny_llama, tmp_path):
    folder = quantize_to_folder(str(tiny_llama), "int8", tmp_path / "int8").out
    at_load, reloaded = engine(tiny_llama, quantization="int8"), engine(folder)
    tokens = [reloaded.tokenize("hello world again")]
    assert torch.equal(at_load.score(tokens)[0], reloaded.score(tokens)[0])
    assert reloaded.info.quantization == "int8"


def test_a_checkpoint_whose_quantization_config_does_not_match_its_tensors_is_refused(awq_folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(awq_folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"] = QuantSpec("int8").hf_config()
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="quantization_config does not match its tensors"):
        engine(bad)
    config["quantization_config"] = {**QuantSpec("awq", 32).hf_config()}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="do not match"):
        engine(bad)
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="'gptq' is not supported"):
        engine(bad)


def test_quantizing_an_already_quantized_checkpoint_is_refused(awq_folder, tmp_path):
    with pytest.raises(InvalidRequest, match="already quantized"):
        engine(awq_folder, quantization="int8")
    with pytest.raises(InvalidRequest, match="already quantized"):
        quantize_to_folder(str(awq_folder), "int8", tmp_path / "again")


def test_calibration_file_missing_or_empty_is_a_clear_error(tiny_llama, tmp_path):
    with pytest.raises(InvalidRequest, match="does not exist"):
        quantize_to_folder(str(tiny_llama), "awq", tmp_path / "a", calib=tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(InvalidRequest, match="is empty"):
        quantize_to_folder(str(tiny_llama), "awq", tmp_path / "b", calib=empty)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_quantize_cli_writes_a_folder_that_generate_serves(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from llmctl.controlplane.cli import app

    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps({"text": f"sample {i}: the quick brown fox"}) for i in range(20)))
    out = tmp_path / "cli-awq"
    result = CliRunner().invoke(app, ["quantize", str(tiny_llama), "--method", "awq", "--calib", str(calib),
                                      "--calib-samples", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "group size 64" in result.output and "% of fp16" in result.output
    result = CliRunner().invoke(app, ["generate", str(out), "hello", "--max-tokens", "4", "--raw"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["quantize", str(tiny_llama), "--method", "nf4", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "int8, awq, rtn4" in result.output


def _llmctl_codes(packed: torch.Tensor) -> torch.Tensor:
    """kernels.cpu.pack_int4's layout [N/16, K/2, 16] -> codes [N, K]."""
    blocks, pairs, _ = packed.shape
    both = torch.cat([packed & 15, packed >> 4], dim=-1).view(blocks, pairs, 16, 2)
    return both.permute(0, 2, 1, 3).reshape(blocks * 16, pairs * 2)


def _int4pack_codes(packed: torch.Tensor) -> torch.Tensor:
    """torch's int4pack layout [N, K/2] -> codes [N, K], decoded as quant_cpu's tiled path does."""
    n, k = packed.shape[0], packed.shape[1] * 2
    codes = torch.empty(k, n)
    ones = torch.ones(1, n)
    for data, lanes, c0, c1 in quant_cpu._int4_tiles(packed, quant_cpu._int4pack_layout(), n):
        codes[:, c0:c1] = quant_cpu._dequantize_int4_tile(data, lanes, ones[:, c0:c1], 8 * ones[:, c0:c1], k)
    return codes.T.to(torch.uint8)


def test_quantizing_at_load_in_bfloat16_rounds_in_float32_and_serves_in_bfloat16(tiny_llama):
    def load(dtype):
        return LLMEngine(EngineConfig(model=str(tiny_llama), dtype=dtype, num_kv_blocks=64, quantization="awq"))

    bf16, fp32 = load("bfloat16"), load("float32")
    for a, b in zip(bf16.runner.model.layers, fp32.runner.model.layers, strict=True):
        for qa, qb in ((a.self_attn.qkv_proj, b.self_attn.qkv_proj), (a.mlp.down_proj, b.mlp.down_proj)):
            # Served on CPU, so prepacked: the same 4-bit codes, the same fp32-exact scales and zeros.
            if qa.packed_weight.dim() == 3:  # bf16 on AVX512-BF16 or AVX2: llmctl's layout, AWQ's fp16 scales and zeros
                s, zero = qb.scales_and_zeros.unbind(-1)  # torch's layout: zero = (8 - z) * s, exact in fp32
                assert torch.equal(qa.scales_and_zeros[0].float(), s)
                assert torch.equal(qa.scales_and_zeros[1].float(), 8 - zero / s)
                assert torch.equal(_llmctl_codes(qa.packed_weight), _int4pack_codes(qb.packed_weight))
            else:
                assert torch.equal(qa.packed_weight, qb.packed_weight)
                assert torch.equal(qa.scales_and_zeros, qb.scales_and_zeros.to(torch.bfloat16))
        assert a.input_layernorm.dtype == torch.bfloat16
    assert bf16.runner.model.embed_tokens.dtype == torch.bfloat16
    assert greedy(bf16, ["hello world"], 4)[0]


# Prepacked CPU layers against the reference, per path: see tests/kernels/test_quant_matmul.py for why
# 1e-2 (bf16) and 1e-3 (fp32, where the AWQ reference rounds its weights to float16) are the bounds.
PREPACK_TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-3}


def quantized_pair(method: str, k: int, n: int, bias: bool):
    torch.manual_seed(0)
    dense = DenseLinear(k, n, bias=bias)
    with torch.no_grad():
        dense.weight.normal_(0, 0.05)
        if bias:
            dense.bias.normal_(0, 0.1)
    make = (lambda d: int8_linear(d)) if method == "int8" else (lambda d: awq.awq_linear(d, 64))
    return make(dense), make(dense)


def to_dtype(layer, dtype):
    if layer.bias is not None:
        layer.bias.data = layer.bias.data.to(dtype)
    return layer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("method,k,n,bias", [("int8", 576, 960, True), ("int8", 1536, 576, False),
                                             ("awq", 576, 960, True), ("awq", 1536, 576, False)])
def test_prepacked_layers_match_the_reference_at_every_batch_size(method, k, n, bias, dtype):
    from tests.kernels.closeness import assert_close

    ref_layer, packed = (to_dtype(layer, dtype) for layer in quantized_pair(method, k, n, bias))
    packed.prepack(dtype)
    # bf16: llmctl's kernel (AVX512-BF16 or AVX2; else M = 1 and 4 take torch's kernels, 33 int8's tiled path, 130
    # both tiled paths); fp32 always tiles.
    for m in (1, 4, 33, 130):
        x = torch.randn(m, k, dtype=dtype)
        got = packed(x)
        assert got.dtype == dtype and got.shape == (m, n)
        assert_close(got, ref_layer(x), PREPACK_TOL[dtype], f"{method} M={m}")


def llmctl_kernel() -> bool:
    """Whether bf16 layers prepack for llmctl's own quantized kernel here (AVX512-BF16 or AVX2)."""
    from llmctl.kernels import cpu

    return quant_cpu.CPU_KERNEL and cpu.quant_linear_available()


def test_prepack_replaces_the_stored_awq_tensors_and_refuses_to_save_them():
    ref_layer, packed = quantized_pair("awq", 576, 960, bias=False)
    stored_bytes = packed.weight_bytes()
    packed.prepack(torch.bfloat16)
    assert packed.qweight is None and packed.qzeros is None and packed.scales is None
    assert packed.packed_weight.dtype == torch.uint8
    # No second copy: 0.5 byte per weight plus a 2-byte (scale, zero) per group and output (llmctl's layout:
    # blocks of 16 outputs, AWQ's fp16 scales and zeros; torch's: [out, in/2], bf16 scales and zeros).
    assert packed.packed_weight.shape == ((960 // 16, 288, 16) if llmctl_kernel() else (960, 288))
    assert packed.weight_bytes() == 960 * 288 + (576 // 64) * 960 * 2 * 2
    assert packed.weight_bytes() < 1.1 * stored_bytes
    names = {name for name, _ in packed.named_buffers()}
    assert names == {"packed_weight", "scales_and_zeros"}
    with pytest.raises(RuntimeError, match="save a quantized model before finalize"):
        packed.state_dict()
    assert set(ref_layer.state_dict()) == {"qweight", "qzeros", "scales"}


def test_prepack_keeps_the_stored_int8_tensors_and_what_state_dict_saves():
    ref_layer, packed = quantized_pair("int8", 576, 960, bias=True)
    packed.prepack(torch.bfloat16)
    if llmctl_kernel():  # the weight reordered in place into 16-output blocks: no copy, and no saving it
        assert packed.weight.dtype == torch.int8 and packed.weight.shape == (960 // 16, 288, 32)
        assert packed.packed_scale.dtype == torch.float32 and packed.packed_scale.shape == (960,)
        assert packed.weight_bytes() == ref_layer.weight_bytes() + 960 * 4
        with pytest.raises(RuntimeError, match="save a quantized model before finalize"):
            packed.state_dict()
        return
    saved, stored = packed.state_dict(), ref_layer.state_dict()
    assert saved.keys() == stored.keys() == {"weight", "weight_scale", "bias"}
    assert all(torch.equal(saved[k], stored[k]) for k in stored)
    assert packed.packed_scale.dtype == torch.bfloat16 and packed.packed_scale.shape == (960,)
    assert packed.weight_bytes() == ref_layer.weight_bytes() + 960 * 2


def test_quantizing_to_a_folder_never_prepacks(tiny_llama, tmp_path, monkeypatch):
    # Checkpoints are written from the unfinalized model, so the stored format is what gets saved.
    from llmctl.agent.engine.models import llama

    def fail(model):
        raise AssertionError("finalize called while quantizing to a folder")

    monkeypatch.setattr(llama, "finalize", fail)
    folder = quantize_to_folder(str(tiny_llama), "rtn4", tmp_path / "rtn4").out
    assert (folder / "model.safetensors").is_file()


def test_layers_the_cpu_kernels_cannot_take_keep_the_stored_layout(monkeypatch):
    from llmctl import kernels

    def dense(k: int, n: int) -> DenseLinear:
        layer = DenseLinear(k, n)
        with torch.no_grad():
            layer.weight.normal_(0, 0.05)
        return layer

    odd_int8 = int8_linear(dense(72, 32))  # 72 input features: torch's int8 kernel steps 16 at a time
    odd_int8.prepack(torch.bfloat16)
    assert odd_int8.packed_scale is None
    odd_awq = awq.awq_linear(dense(64, 24), 32)  # 24 outputs: int4pack packs 16 rows at a time
    odd_awq.prepack(torch.bfloat16)
    assert odd_awq.packed_weight is None and odd_awq.qweight is not None
    # LLMCTL_KERNELS=reference (or triton) forces its backend: layers stay as stored.
    monkeypatch.setattr(kernels, "BACKEND", "reference")
    _, forced = quantized_pair("awq", 576, 960, bias=False)
    forced.prepack(torch.bfloat16)
    assert forced.packed_weight is None and set(forced.state_dict()) == {"qweight", "qzeros", "scales"}
