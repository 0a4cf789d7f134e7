"""The GPU benchmark scripts run on CPU (--device cpu --quick: reference kernels, tiny shapes) and write
their JSON with the documented keys, so the one-shot GPU check (benchmarks/gpu_check.sh) is not its
own first test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.kernels import cpu

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the scripts find llmctl themselves, from any directory
    env.pop("LLMCTL_KERNELS", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--device", "cpu", "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_bench_kernels_on_cpu_times_the_reference_ops_and_writes_kernels_json(tmp_path):
    done = run_script("bench_kernels.py", tmp_path)
    assert "Triton skipped" in done.stdout
    data = json.loads((tmp_path / "kernels.json").read_text())
    assert {"device", "quick", "triton", "triton_skipped_reason", "timer", "copy", "results"} <= data.keys()
    assert data["triton"] is False and data["copy"]["gbps"] > 0
    assert {r["op"] for r in data["results"]} == {"paged_decode", "awq_gemv", "w8a16_gemv"}
    for row in data["results"]:
        assert "error" not in row, row
        assert {"case", "bytes", "reference_ms", "reference_gbps", "goal_frac_of_copy"} <= row.keys()
        assert row["bytes"] > 0 and row["reference_ms"] > 0


def test_bench_engine_kernels_on_cpu_runs_the_reference_engine_and_writes_engine_json(tmp_path):
    run_script("bench_engine_kernels.py", tmp_path)
    data = json.loads((tmp_path / "engine.json").read_text())
    expected = {"device", "quick", "dtype", "prompt_len", "output_len", "batches", "backends", "results"}
    expected.add("ratios")
    assert expected <= data.keys()
    assert list(data["backends"]) == ["reference"]
    assert [r["batch"] for r in data["results"]] == [1, 4]
    for run in data["results"]:
        assert run["backend"] == "reference"
        assert run["decode_tokens"] == run["batch"] * (data["output_len"] - 1)
        assert run["decode_tokens_per_s"] > 0 and run["total_s"] >= run["decode_s"] > 0
    assert [r["batch"] for r in data["ratios"]] == [1, 4]


def test_bench_quality_sampling_measures_both_arms_and_writes_json(tmp_path):
    out = tmp_path / "sampling.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_quality_sampling.py"), "--requests", "20",
         "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "sampled - unsampled: p50" in done.stdout
    data = json.loads(out.read_text())
    assert set(data["arms"]) == {"sampled", "unsampled"} and data["samples_queued"] == 10
    for arm in data["arms"].values():
        assert 0 < arm["p50_ms"] <= arm["p95_ms"]
    assert len(data["difference_ms"]["p50"]) == len(data["difference_ms"]["p95"]) == 3  # estimate, 95% CI


def test_bench_cpu_elementwise_times_the_cpu_kernels_against_the_reference(tmp_path):
    out = tmp_path / "elementwise.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cpu_elementwise.py"), "--rows", "64", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["rows"] == 64 and data["dtype"] == "bfloat16"
    assert [op["op"] for op in data["ops"]] == ["rms_norm+residual", "rotary (q and k)", "silu_and_mul"]
    assert all(op["us"] > 0 and op["reference_us"] > 0 and op["gb_per_s"] > 0 for op in data["ops"])


@pytest.mark.skipif(not cpu.quant_linear_available(), reason="llmctl's blocked bf16 linear needs AVX512-BF16 or AVX2")
def test_bench_dense_layout_times_both_bf16_layouts_and_writes_json(tmp_path):
    out = tmp_path / "dense.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_dense_layout.py"), "--m", "1,5", "--layers", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [row["m"] for row in data["rows"]] == [1, 5] and data["layers"] == 1
    assert all(row["onednn_ms"] > 0 and row["blocked_ms"] > 0 and row["ratio"] > 0 for row in data["rows"])
