"""The agent's measurement runner: real `llmctl bench` and `llmctl eval` children against a real `llmctl serve`
of a tiny random Llama, one at a time, with timeouts, cancels and answers repeated from stored outcomes."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llmctl.agent.measurement import MeasurementOutcome, MeasurementRunner, measurement_argv
from llmctl.agent.replicas import free_port
from tests.factories import serve_process

WORKLOAD = {"requests": 4, "input_len": [8, 16], "output_len": [4, 8], "shared_prefix_len": 0,
            "request_rate": "inf", "seed": 0}


class Outcomes:
    """A runner and every outcome it delivered, in order."""

    def __init__(self, work_dir: Path) -> None:
        self._queue: queue.Queue[MeasurementOutcome] = queue.Queue()
        self.runner = MeasurementRunner(self._queue.put, work_dir=work_dir)

    def next(self, timeout: float = 90) -> MeasurementOutcome:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no measurement outcome within {timeout}s") from None

    def until(self, measurement_id: int) -> list[MeasurementOutcome]:
        """Every outcome up to and including the one of measurement_id."""
        seen = [self.next()]
        while seen[-1].measurement_id != measurement_id:
            seen.append(self.next())
        return seen

    def pending(self) -> bool:
        return not self._queue.empty()


@pytest.fixture(scope="module")
def server(tiny_llama) -> Iterator[str]:
    # A KV pool of 8 blocks (128 tokens): too small for a few concurrent requests, so the server preempts.
    with serve_process(str(tiny_llama), "--dtype", "float32", "--num-kv-blocks", "8", "--threads", "1") as url:
        yield url


@pytest.fixture
def outcomes(tmp_path: Path) -> Iterator[Outcomes]:
    made = Outcomes(tmp_path / "measurements")
    yield made
    made.runner.close()


def bench_args(server: str, model: Path, **workload) -> dict:
    return {"url": server, "model": str(model), "workload": {**WORKLOAD, **workload}}


def bench_children() -> list[int]:
    """Pids of `llmctl bench` processes under this test process."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "bench" in proc.cmdline():
                found.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_bench_measurement_reports_throughput_and_what_the_server_said(outcomes, server, tiny_llama):
    args = bench_args(server, tiny_llama, requests=12, input_len=[32, 64], output_len=[16, 32])
    outcomes.runner.submit(1, "bench", args, timeout_s=120)
    outcome = outcomes.next()
    assert outcome.ok, outcome.error
    assert outcome.measurement_id == 1 and outcome.error is None and outcome.wall_s > 0
    (run,) = outcome.result["runs"]
    assert run["name"] == "url" and run["output_tokens_per_s"] > 0 and run["num_requests"] == 12
    assert run["ttft_ms"]["p95"] > 0 and run["output_lengths_match"]
    assert outcome.result["workload"]["input_len"] == [32, 64]
    server_said = run["server"]
    # 8 blocks of 16 tokens x (K+V, 2 layers, 2 KV heads, head dim 16, fp32) bytes per token.
    assert server_said["kv_blocks_total"] == 8 and server_said["kv_cache_bytes"] == 8 * 16 * 2 * 2 * 2 * 16 * 4
    assert server_said["num_preemptions"] > 0  # 12 requests of 3 to 6 blocks each in 8 blocks
    assert 0 <= server_said["peak_kv_usage"] <= 1  # seen while polling: a very fast run may look idle
    assert server_said["model_bytes"] >= server_said["linear_weight_bytes"] > 0


def test_a_bench_with_recorded_lengths_hands_them_to_the_child_in_a_file(outcomes, server, tiny_llama):
    lengths = [[8, 3], [20, 5]]
    args = bench_args(server, tiny_llama, requests=4, input_len=[8, 20], output_len=[3, 5], lengths=lengths)
    assert "--workload" not in measurement_argv("bench", args)  # one pair per request may not fit a command line
    outcomes.runner.submit(8, "bench", args, timeout_s=120)
    outcome = outcomes.next()
    assert outcome.ok, outcome.error
    (run,) = outcome.result["runs"]
    assert run["output_tokens_per_request"] == [3, 5, 3, 5]
    assert outcome.result["workload"]["lengths"] == lengths
    assert list(outcomes.runner.work_dir.iterdir()) == []  # the input file went with the output


def test_eval_measurement_compares_two_engine_configs_of_one_model(outcomes, tiny_llama):
    config = {"dtype": "float32", "num_kv_blocks": 64}
    args = {"model": str(tiny_llama), "engine_config": {**config, "kv_cache_dtype": "int8"},
            "reference_model": str(tiny_llama), "reference_engine_config": {**config, "kv_cache_dtype": "auto"},
            "max_tokens": 64, "mc_limit": 2, "context_len": 32}
    outcomes.runner.submit(2, "eval", args, timeout_s=120)
    outcome = outcomes.next()
    assert outcome.ok, outcome.error
    candidate, reference = outcome.result["candidate"], outcome.result["reference"]
    assert candidate["kv_cache_dtype"] == "int8" and reference["kv_cache_dtype"] == "float32"
    assert candidate["perplexity"] > 1 and reference["perplexity"] > 1
    assert candidate["num_items"] == 2 and 0 < candidate["num_tokens"] <= 64
    assert reference["kl_divergence"] == 0 and candidate["kv_bytes_per_token"] < reference["kv_bytes_per_token"]


@pytest.mark.parametrize(("kind", "args", "message"), [
    ("profile", {}, "unknown measurement kind 'profile'"),
    ("bench", {"model": "m"}, "needs 'url'"),
    ("bench", {"url": "http://127.0.0.1:1"}, "needs 'model'"),
    ("bench", {"url": "127.0.0.1:1", "model": "m"}, "must start with http"),
    ("bench", {"url": "http://h", "model": "m", "workload": {"requests": "4"}}, "workload.requests must be an "
                                                                               "integer >= 1"),
    ("bench", {"url": "http://h", "model": "m", "workload": {"input_len": [9, 3]}}, "workload.input_len must be"),
    ("bench", {"url": "http://h", "model": "m", "workload": {"request_rate": 0}}, "request_rate must be a positive"),
    ("bench", {"url": "http://h", "model": "m", "workload": {"rps": 3}}, "unknown workload key(s) rps"),
    ("bench", {"url": "http://h", "model": "m", "workload": {"lengths": [[3, 0]]}}, "workload.lengths must be"),
    ("bench", [1, 2], "bench argument must be a JSON object"),
    ("eval", {"engine_config": {}}, "needs 'model'"),
    ("eval", {"model": "m", "engine_config": "int8"}, "engine_config must be a JSON object"),
    ("eval", {"model": "m", "max_tokens": True}, "max_tokens must be an integer >= 1"),
])
def test_bad_arguments_are_answered_at_once_with_a_failed_outcome(outcomes, kind, args, message):
    outcomes.runner.submit(3, kind, args)
    outcome = outcomes.next(timeout=1)
    assert (outcome.measurement_id, outcome.ok, outcome.result, outcome.wall_s) == (3, False, None, 0.0)
    assert message in outcome.error


def test_arguments_become_the_documented_command_lines():
    assert measurement_argv("bench", {"url": "http://h:1", "model": "m", "workload": WORKLOAD}) == [
        "bench", "--url", "http://h:1", "--model", "m", "--requests", "4", "--shared-prefix-len", "0", "--seed", "0",
        "--input-len", "8:16", "--output-len", "4:8", "--request-rate", "inf"]
    assert measurement_argv("eval", {"model": "m", "engine_config": {"kv_cache_dtype": "int8"},
                                     "reference_model": "r", "max_tokens": 9, "mc_limit": 0}) == [
        "eval", "m", "--reference-model", "r", "--engine-config", '{"kv_cache_dtype": "int8"}', "--max-tokens", "9",
        "--no-mc"]


def test_a_failing_child_is_answered_with_its_exit_code_and_last_lines(outcomes, tiny_llama):
    nowhere = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    outcomes.runner.submit(9, "bench", bench_args(nowhere, tiny_llama), timeout_s=120)
    outcome = outcomes.next()
    assert not outcome.ok and outcome.result is None
    assert outcome.error.startswith("llmctl bench exited with code 2; last lines of its output:")
    assert f"cannot reach {nowhere}/v1/models" in outcome.error
    assert (outcomes.runner.work_dir / "measurement-9.log").exists()  # kept for a closer look


def test_a_timed_out_measurement_is_killed_and_a_repeated_id_is_run_once(outcomes, server, tiny_llama):
    args = bench_args(server, tiny_llama)
    outcomes.runner.submit(4, "bench", args, timeout_s=0.5)
    outcomes.runner.submit(4, "bench", args, timeout_s=0.5)  # queued or running: ignored
    outcomes.runner.submit(5, "bench", args, timeout_s=0.5)
    first, second = outcomes.until(5)  # one at a time, in order: a second run of 4 would come before 5
    assert (first.measurement_id, second.measurement_id) == (4, 5)
    for outcome in (first, second):
        assert not outcome.ok and outcome.error.startswith("timed out after 0.5s") and outcome.wall_s >= 0.5
    assert bench_children() == []
    # Finished: asking again answers the stored outcome at once, without running anything.
    outcomes.runner.submit(4, "bench", args, timeout_s=0.5)
    assert outcomes.next(timeout=1) == first


def test_cancel_kills_the_running_child_and_drops_a_queued_one(outcomes, server, tiny_llama):
    args = bench_args(server, tiny_llama)
    outcomes.runner.submit(6, "bench", args, timeout_s=120)
    outcomes.runner.submit(7, "bench", args, timeout_s=120)
    log = outcomes.runner.work_dir / "measurement-6.log"
    deadline = time.monotonic() + 30
    while not bench_children():
        assert time.monotonic() < deadline, "the bench child never started"
        time.sleep(0.05)
    outcomes.runner.cancel(7)
    queued = outcomes.next(timeout=1)
    assert (queued.measurement_id, queued.ok, queued.error) == (7, False, "cancelled")
    outcomes.runner.cancel(6)
    running = outcomes.next(timeout=10)
    assert (running.measurement_id, running.ok, running.error) == (6, False, "cancelled")
    assert bench_children() == [] and log.exists()
    # A cancelled id stays cancelled: a late resend of it is answered, not run.
    outcomes.runner.submit(7, "bench", args)
    assert outcomes.next(timeout=1) == queued
