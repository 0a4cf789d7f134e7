"""llmctl bench: the seeded workload, option checks, metric arithmetic, and real end-to-end runs on a tiny
random Llama (in-process engine, transformers baselines, a live `llmctl serve`, and the CLI)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from transformers import AutoTokenizer
from typer.testing import CliRunner

from llmctl.agent.bench import (
    BenchOptions,
    RequestResult,
    make_workload,
    parse_range,
    resolve_dtype,
    run_bench,
)
from llmctl.agent.bench_child import run_isolated
from tests.factories import make_tiny_llama, make_tokenizer

RUN_KEYS = {"name", "output_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms", "itl_ms",
            "total_output_tokens", "wall_s"}
DIST_KEYS = {"mean", "p50", "p95", "p99"}


def options(**overrides) -> BenchOptions:
    fields = dict(requests=6, input_len="4:24", output_len="2:7", shared_prefix_len=0, request_rate="inf",
                  seed=0, baselines="", hf_batch_size=4, url=None, compare_prefix_caching=False,
                  run_engine=True, json_path=None, workload=None)
    fields.update(overrides)
    return BenchOptions.from_cli(**fields)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("bench") / "tiny-llama")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def check_json(data: dict, names: list[str], drawn: list[int]) -> None:
    assert [run["name"] for run in data["runs"]] == names
    for run in data["runs"]:
        assert RUN_KEYS <= run.keys()
        for key in ("ttft_ms", "tpot_ms", "itl_ms"):
            assert run[key].keys() == DIST_KEYS
            assert run[key]["p50"] <= run[key]["p99"]
        assert run["output_tokens_per_request"] == drawn, run["name"]
        assert run["total_output_tokens"] == sum(drawn)
        assert run["output_tokens_per_s"] > 0 and run["wall_s"] > 0
    assert data["workload"]["output_len"] == [2, 7]


def test_workload_is_seeded_bounded_and_shares_its_prefix():
    tokenizer = make_tokenizer()
    opts = options(requests=40, shared_prefix_len=5, seed=3)
    first, again = make_workload(tokenizer, opts), make_workload(tokenizer, opts)
    assert first == again
    assert first != make_workload(tokenizer, options(requests=40, shared_prefix_len=5, seed=4))
    prefix = first[0].prompt_token_ids[:5]
    special = set(tokenizer.all_special_ids)
    for req in first:
        assert req.prompt_token_ids[:5] == prefix
        assert 4 <= len(req.prompt_token_ids) - 5 <= 24
        assert 2 <= req.output_len <= 7
        assert req.arrival_s == 0.0
        assert not special & set(req.prompt_token_ids)
    assert len({r.output_len for r in first}) > 1 and len({len(r.prompt_token_ids) for r in first}) > 1


def test_poisson_arrivals_follow_the_request_rate():
    workload = make_workload(make_tokenizer(), options(requests=400, request_rate="20"))
    arrivals = [r.arrival_s for r in workload]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    assert 0.04 < arrivals[-1] / 399 < 0.06


@pytest.mark.parametrize(("overrides", "message"), [
    ({"input_len": "8"}, None),
    ({"input_len": "0:8"}, "--input-len must look like A:B with 1 <= A <= B"),
    ({"input_len": "9:8"}, "--input-len must look like A:B"),
    ({"output_len": "a:b"}, "--output-len must look like A:B"),
    ({"requests": 0}, "--requests must be >= 1"),
    ({"request_rate": "fast"}, "--request-rate must be a positive number or inf"),
    ({"request_rate": "0"}, "--request-rate must be a positive number or inf"),
    ({"shared_prefix_len": -1}, "--shared-prefix-len must be >= 0"),
    ({"baselines": "hf-sequential,tgi"}, "unknown baseline 'tgi'"),
    ({"hf_batch_size": 0}, "--hf-batch-size must be >= 1"),
    ({"url": "localhost:8000"}, "--url must start with http"),
    ({"run_engine": False}, "nothing to run"),
    ({"run_engine": False, "compare_prefix_caching": True, "baselines": "hf-static"}, "needs the in-process"),
    ({"compare_quantization": "int8,fp4"}, "--compare-quantization takes int8, awq, rtn4, got 'fp4'"),
    ({"run_engine": False, "compare_quantization": "int8", "baselines": "hf-static"}, "needs the in-process"),
    ({"run_engine": False, "compare_speculative": True, "baselines": "hf-static"}, "needs the in-process"),
    ({"workload_kind": "repetitive", "shared_prefix_len": 4}, "does not apply to --workload repetitive"),
    ({"workload_kind": "chatty"}, "--workload kind must be one of mixed, repetitive"),
])
def test_bench_options_reject_bad_values(overrides, message):
    if message is None:
        assert options(**overrides).input_len == (8, 8)
        return
    with pytest.raises(ValueError, match=message):
        options(**overrides)


def test_url_turns_the_in_process_engine_off():
    opts = options(url="http://127.0.0.1:9/v1/")
    assert opts.url == "http://127.0.0.1:9/v1" and not opts.run_engine
    assert parse_range("--x", " 3:5 ") == (3, 5)


def test_dtype_auto_follows_the_hardware():
    assert resolve_dtype("float32") == "float32"
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native_bf16 else "float32")


def test_latencies_count_a_multi_token_delta_as_simultaneous_tokens():
    # Arrived at 1.0; one token at 1.5, then a delta of two tokens at 2.0, then one at 2.3.
    result = RequestResult(0, 1.0, [1.5, 2.0, 2.0, 2.3])
    assert result.ttft_s == 0.5
    assert result.e2e_s == pytest.approx(1.3)
    assert result.tpot_s == pytest.approx(0.8 / 3)
    assert result.itls_s == pytest.approx([0.5, 0.0, 0.3])
    assert RequestResult(1, 0.0, [0.25]).tpot_s is None


def test_engine_and_hf_baselines_produce_every_drawn_token(tiny_model, tmp_path):
    from llmctl.agent.engine.config import EngineConfig

    out = tmp_path / "bench.json"
    # Staggered arrivals: requests admitted in the same step as the first one cannot hit its prefix yet.
    opts = options(baselines="hf-sequential,hf-static", json_path=str(out), shared_prefix_len=16,
                   compare_prefix_caching=True, request_rate="20", compare_quantization="int8")
    report = run_bench(opts, EngineConfig(model=str(tiny_model), dtype="float32"), console=quiet())
    data = json.loads(out.read_text())
    drawn = [r.output_len for r in report.workload]
    check_json(data, ["hf-sequential", "hf-static", "llmctl", "llmctl-no-prefix-cache", "llmctl-int8"], drawn)
    assert data["reference"] == "hf-sequential" and data["runs"][0]["x_reference"] == 1.0
    assert data["dtype"] == "float32"
    engine_runs = {run["name"]: run for run in data["runs"][2:]}
    for run in engine_runs.values():
        assert run["peak_kv_bytes"] > 0 and 0 <= run["peak_kv_waste"] < 1
    # Every prompt starts with the same 16-token block, so the cached run skips recomputing it.
    assert engine_runs["llmctl"]["prefix_cache_hit_rate"] > 0
    assert engine_runs["llmctl-no-prefix-cache"]["prefix_cache_hit_rate"] == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tiny_model):
    port = free_port()
    llmctl = Path(sys.executable).parent / "llmctl"
    proc = subprocess.Popen(
        [str(llmctl), "serve", str(tiny_model), "--port", str(port), "--dtype", "float32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log = proc.stderr.read().decode()[-2000:]
                pytest.fail(f"llmctl serve exited with {proc.returncode}: {log}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llmctl serve did not answer /v1/models within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_url_run_streams_every_drawn_token_from_a_live_server(server, tiny_model, tmp_path):
    out = tmp_path / "url.json"
    # No --model: the tokenizer comes from the model the server names in /v1/models.
    opts = options(url=server + "/v1", json_path=str(out), request_rate="50")
    report = run_bench(opts, None, console=quiet())
    data = json.loads(out.read_text())
    drawn = [r.output_len for r in report.workload]
    check_json(data, ["url"], drawn)
    assert data["dtype"] is None and data["workload"]["request_rate"] == 50.0
    # The llmctl server's own view of the run, from its /metrics.
    server_said = data["runs"][0]["server"]
    assert server_said["num_preemptions"] == 0 and server_said["kv_cache_bytes"] > 0
    assert server_said.keys() == {"num_preemptions", "model_bytes", "linear_weight_bytes", "kv_cache_bytes",
                                  "kv_blocks_total", "peak_kv_usage"}

    # With --model as well, the model only supplies the tokenizer: same prompts, still no local engine run.
    from llmctl.agent.engine.config import EngineConfig

    again = run_bench(opts, EngineConfig(model=str(tiny_model), dtype="float32"), console=quiet())
    assert [run.name for run in again.runs] == ["url"]
    assert again.workload == report.workload


def test_cli_bench_writes_json_and_rejects_bad_ranges(tiny_model, tmp_path):
    from llmctl.controlplane.cli import app

    out = tmp_path / "cli.json"
    args = ["bench", "--model", str(tiny_model), "--requests", "6", "--input-len", "4:24",
            "--output-len", "2:7", "--dtype", "float32", "--baselines", "hf-static", "--hf-batch-size", "3",
            "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "x vs hf-" in result.output and "latency (ms)" in result.output
    drawn = [r.output_len for r in make_workload(AutoTokenizer.from_pretrained(tiny_model), options())]
    check_json(json.loads(out.read_text()), ["hf-static", "llmctl"], drawn)

    bad = CliRunner().invoke(app, ["bench", "--model", str(tiny_model), "--input-len", "9:3"])
    assert bad.exit_code == 2
    assert "--input-len must look like A:B with 1 <= A <= B" in bad.output


def test_a_workload_longer_than_the_context_is_rejected_before_loading(tiny_model):
    from llmctl.agent.engine.config import EngineConfig

    config = EngineConfig(model=str(tiny_model), dtype="float32")
    with pytest.raises(ValueError, match="the longest request needs 560 tokens .* context limit is 512"):
        run_bench(options(input_len="100:500", output_len="10:60"), config, console=quiet())


def test_explicit_lengths_are_cycled_over_the_requests_behind_the_shared_prefix():
    tokenizer = make_tokenizer()
    pairs = [[3, 2], [9, 5], [6, 1]]
    opts = options(requests=7, shared_prefix_len=4, workload={"lengths": pairs})
    assert (opts.input_len, opts.output_len) == ((3, 9), (1, 5))  # the ranges span the lengths
    workload = make_workload(tokenizer, opts)
    assert workload == make_workload(tokenizer, opts)
    expected = [pairs[i % 3] for i in range(7)]
    assert [[len(r.prompt_token_ids) - 4, r.output_len] for r in workload] == expected
    assert {tuple(r.prompt_token_ids[:4]) for r in workload} == {tuple(workload[0].prompt_token_ids[:4])}
    # The file's keys win over the flags they name.
    spec = {"requests": 2, "seed": 5, "request_rate": 4, "lengths": pairs}
    assert options(workload=spec).requests == 2 and options(workload=spec).request_rate == 4.0


@pytest.mark.parametrize(("content", "message"), [
    (None, "--workload {path}: no such file"),
    ("{requests: 2", "--workload {path} is not valid JSON"),
    ("[1]", "--workload {path} must hold a JSON object"),
    ('{"prompts": 2}', "--workload {path}: unknown key(s) prompts"),
    ('{"lengths": [[4, 0]]}', "workload lengths must be 1 to 10000 pairs [input_tokens, output_tokens]"),
    ('{"request_rate": "soon"}', "--request-rate must be a positive number or inf, got 'soon'"),
])
def test_cli_bench_refuses_a_bad_workload_file_in_one_line(tiny_model, tmp_path, content, message):
    from llmctl.controlplane.cli import app

    path = tmp_path / "workload.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_model), "--workload", str(path)])
    assert result.exit_code == 2
    assert message.format(path=path) in " ".join(result.output.split())


def test_cli_bench_runs_a_workload_file_with_recorded_lengths(tiny_model, tmp_path):
    from llmctl.controlplane.cli import app

    spec = tmp_path / "workload.json"
    spec.write_text(json.dumps({"requests": 5, "shared_prefix_len": 8, "lengths": [[4, 3], [12, 6]]}))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_model), "--dtype", "float32", "--input-len",
                                      "100:200", "--workload", str(spec), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "recorded lengths" in result.output
    data = json.loads(out.read_text())
    assert data["runs"][0]["output_tokens_per_request"] == [3, 6, 3, 6, 3]
    assert data["workload"]["lengths"] == [[4, 3], [12, 6]] and data["workload"]["input_len"] == [4, 12]
    assert data["workload"]["total_prompt_tokens"] == 5 * 8 + 4 + 12 + 4 + 12 + 4


def test_repetitive_prompts_quote_a_passage_of_the_shipped_text_and_follow_the_seed():
    from llmctl.agent.bench_workload import INSTRUCTIONS
    from llmctl.agent.engine.quantization.calibration import DEFAULT_CALIBRATION, read_text

    tokenizer = make_tokenizer()
    opts = options(requests=6, input_len="8:40", workload_kind="repetitive", seed=1)
    first = make_workload(tokenizer, opts)
    assert first == make_workload(tokenizer, opts)
    other = make_workload(tokenizer, options(requests=6, input_len="8:40", workload_kind="repetitive", seed=2))
    assert [r.prompt_token_ids for r in other] != [r.prompt_token_ids for r in first]
    # Output lengths are drawn as for the mixed workload of the same seed.
    assert [r.output_len for r in first] == [r.output_len for r in make_workload(tokenizer, options(
        requests=6, input_len="8:40", seed=1))]
    words = " ".join(read_text(DEFAULT_CALIBRATION).split() * 2)  # a passage may run on into the start again
    for i, req in enumerate(first):
        text = tokenizer.decode(req.prompt_token_ids)
        head, tail = "<|im_start|>user\n", f"\n\n{INSTRUCTIONS[i % 3]}<|im_end|>\n<|im_start|>assistant\n"
        assert text.startswith(head) and text.endswith(tail), text
        passage = text[len(head):-len(tail)]
        assert " ".join(passage.split()) in words
        assert 1 <= len(tokenizer(passage, add_special_tokens=False)["input_ids"]) <= 40


def test_repetitive_prompts_are_plain_text_without_a_chat_template():
    from llmctl.agent.bench_workload import INSTRUCTIONS, repetitive_prompts

    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    [ids] = repetitive_prompts(tokenizer, 0, [30])
    text = tokenizer.decode(ids)
    assert text.endswith(f"\n\n{INSTRUCTIONS[0]}\n") and "<|im_start|>user" not in text


def test_compare_speculative_adds_a_run_without_speculation(tiny_model, tmp_path):
    from llmctl.agent.engine.config import EngineConfig

    out, console = tmp_path / "spec.json", quiet()
    opts = options(requests=4, input_len="8:24", output_len="3:9", json_path=str(out), workload_kind="repetitive",
                   compare_speculative=True)
    config = EngineConfig(model=str(tiny_model), dtype="float32", speculative_method="ngram",
                          num_speculative_tokens=3)
    report = run_bench(opts, config, console=console)
    data = json.loads(out.read_text())
    assert [run["name"] for run in data["runs"]] == ["llmctl", "llmctl-no-spec"]
    assert data["workload"]["kind"] == "repetitive"
    spec, plain = data["runs"]
    drawn = [r.output_len for r in report.workload]
    assert spec["output_tokens_per_request"] == plain["output_tokens_per_request"] == drawn
    # Without speculation every target forward yields one token per sequence; drafts can only make it fewer.
    assert plain["forwards_per_token"] == 1.0 and not any(key.startswith("spec_") for key in plain)
    assert 0 < spec["forwards_per_token"] <= 1.0
    assert len(spec["spec_accepted_per_pos"]) == 3
    assert sum(spec["spec_accepted_per_pos"]) == spec["spec_num_accepted_tokens"] <= spec["spec_num_draft_tokens"]
    if spec["spec_num_drafts"]:
        assert spec["spec_acceptance_rate"] == spec["spec_num_accepted_tokens"] / spec["spec_num_draft_tokens"]
        assert spec["spec_mean_accepted_length"] == 1 + spec["spec_num_accepted_tokens"] / spec["spec_num_drafts"]
    printed = " ".join(console.file.getvalue().split())
    assert "repetitive workload, 4 requests, passage 8:24" in printed
    assert "llmctl: " in printed and "target forwards per token" in printed
    assert "llmctl-no-spec: 1.00 target forwards per token" in printed


def test_compare_speculative_needs_a_speculative_method(tiny_model):
    from llmctl.agent.engine.config import EngineConfig

    with pytest.raises(ValueError, match="--compare-speculative needs --speculative-method"):
        run_bench(options(compare_speculative=True), EngineConfig(model=str(tiny_model)), console=quiet())


def test_cli_bench_passes_the_speculative_flags_and_the_workload_kind(tiny_model, monkeypatch):
    import llmctl.agent.bench as bench
    from llmctl.controlplane.cli import app

    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda options, config: seen.append((options, config)))
    args = ["bench", "--model", str(tiny_model), "--workload", "repetitive", "--compare-speculative",
            "--speculative-method", "ngram", "--num-speculative-tokens", "6", "--ngram-max", "5", "--ngram-min", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [(opts, config)] = seen
    assert opts.workload_kind == "repetitive" and opts.compare_speculative
    assert (config.speculative_method, config.speculative_model, config.num_speculative_tokens, config.ngram_max,
            config.ngram_min) == ("ngram", None, 6, 5, 2)
    seen.clear()
    assert CliRunner().invoke(app, ["bench", "--model", str(tiny_model), "--workload", "mixed"]).exit_code == 0
    assert seen[0][0].workload_kind == "mixed" and seen[0][1].speculative_method == "none"

    bad = CliRunner().invoke(app, ["bench", "--model", str(tiny_model), "--ngram-min", "5", "--ngram-max", "2",
                                   "--speculative-method", "ngram"])
    assert bad.exit_code == 2 and "need 1 <= ngram_min <= ngram_max" in bad.output


def test_isolated_runs_measure_each_engine_row_in_a_process_of_its_own(tiny_model, tmp_path, monkeypatch):
    from llmctl.agent.engine import async_engine
    from llmctl.agent.engine.config import EngineConfig

    def no_engine_here(config):
        raise AssertionError("an isolated run built an engine in the bench process")

    monkeypatch.setattr(async_engine.AsyncEngine, "from_config", staticmethod(no_engine_here))
    out = tmp_path / "iso.json"
    opts = options(requests=3, input_len="8:24", output_len="3:9", json_path=str(out), compare_speculative=True,
                   isolate_runs=True)
    config = EngineConfig(model=str(tiny_model), dtype="float32", speculative_method="ngram")
    report = run_bench(opts, config, console=quiet())
    data = json.loads(out.read_text())
    assert data["workload"]["isolated_runs"] is True
    assert [run["name"] for run in data["runs"]] == ["llmctl", "llmctl-no-spec"]
    drawn = [r.output_len for r in report.workload]
    for run in data["runs"]:
        assert run["output_tokens_per_request"] == drawn and run["output_tokens_per_s"] > 0
        assert run["ttft_ms"]["p50"] > 0 and run["num_kv_blocks"] > 0
    assert data["runs"][1]["forwards_per_token"] == 1.0 and "spec_num_drafts" in data["runs"][0]

    broken = EngineConfig(model=str(tmp_path / "gone"), dtype="float32")
    with pytest.raises(RuntimeError, match="isolated engine run llmctl failed"):
        run_isolated("llmctl", broken, report.workload, [], lambda: None)
