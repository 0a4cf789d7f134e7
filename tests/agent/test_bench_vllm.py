"""The vLLM baseline's plumbing: finding the peer virtualenv, the child's request driver (arrival times,
per-step token times), and the parent reading a child's result back. vLLM itself is not installed for the
test suite (`make peers` sets it up for benchmarks); the driver is run against a scripted engine with
vLLM's add_request / step / has_unfinished_requests surface."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmctl.agent import bench_vllm, vllm_child
from llmctl.agent.bench import BenchRequest


@dataclass
class Output:
    request_id: str
    token_ids: list[int]
    finished: bool

    @property
    def outputs(self):
        return [self]


@dataclass
class ScriptedEngine:
    """Each step gives every running request one more token (two on its first step, like a prefill that
    also emits a token and a speculative one), and records when each request was added."""

    added: dict[str, tuple[list[int], int]] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)
    steps: int = 0

    def add_request(self, rid, prompt, max_tokens):
        self.added[rid] = (prompt["prompt_token_ids"], max_tokens)
        self.produced[rid] = 0

    def has_unfinished_requests(self):
        return any(self.produced[r] < self.added[r][1] for r in self.added)

    def step(self):
        self.steps += 1
        outs = []
        for rid, (_, max_tokens) in self.added.items():
            if self.produced[rid] < max_tokens:
                self.produced[rid] = min(max_tokens, self.produced[rid] + (2 if self.produced[rid] == 0 else 1))
                outs.append(Output(rid, list(range(self.produced[rid])), self.produced[rid] == max_tokens))
        return outs


def test_driver_adds_requests_at_their_arrival_times_and_stamps_every_token(capsys):
    engine = ScriptedEngine()
    requests = [
        {"index": 0, "prompt_token_ids": [1, 2, 3], "output_len": 4, "arrival_s": 0.0},
        {"index": 1, "prompt_token_ids": [4, 5], "output_len": 3, "arrival_s": 0.05},
    ]
    times, wall = vllm_child.drive(engine, requests, "bench", report=True, params=lambda n: n)
    assert engine.added == {"bench-0": ([1, 2, 3], 4), "bench-1": ([4, 5], 3)}
    assert [len(times["bench-0"]), len(times["bench-1"])] == [4, 3]
    # The late request waited for its arrival; two tokens of one step share a time; times never go back.
    assert times["bench-1"][0] >= 0.05
    assert times["bench-0"][0] == times["bench-0"][1]
    assert all(a <= b for t in times.values() for a, b in zip(t, t[1:], strict=False))
    assert wall >= times["bench-1"][-1]
    assert capsys.readouterr().out.split("\n")[:2] == ["done bench-0", "done bench-1"]


def test_a_missing_peer_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv(bench_vllm.PYTHON_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_vllm, "__file__", str(tmp_path / "a" / "b" / "c" / "bench_vllm.py"))
    with pytest.raises(ValueError, match="make peers"):
        bench_vllm.peer_python()
    monkeypatch.setenv(bench_vllm.PYTHON_ENV, str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="is not a file"):
        bench_vllm.peer_python()


def test_the_parent_reads_the_childs_token_times_and_reports_its_failure(tmp_path, monkeypatch):
    """A child that answers as vllm_child does (a result file, 'done' lines), run by this Python."""
    child = tmp_path / "child.py"
    child.write_text(
        "import json, sys\n"
        "spec = json.load(open(sys.argv[1]))\n"
        "times = {str(r['index']): [0.1 * (i + 1) for i in range(r['output_len'])] for r in spec['requests']}\n"
        "for r in spec['requests']: print('done', r['index'], flush=True)\n"
        "json.dump({'token_times': times, 'wall_s': 1.5, 'vllm_version': '0.0-test',\n"
        "           'settings': {'VLLM_CPU_OMP_THREADS_BIND': '0-1'}}, open(sys.argv[2], 'w'))\n"
    )
    monkeypatch.setattr(bench_vllm, "CHILD", child)
    workload = [BenchRequest(0, [1, 2], 2, 0.0), BenchRequest(1, [3], 3, 0.0)]
    spec = {"max_num_seqs": 8, "max_num_batched_tokens": 64, "enable_prefix_caching": False,
            "kv_cache_bytes": 1 << 20, "num_threads": 2, "max_model_len": 128,
            "requests": [{"index": r.index, "output_len": r.output_len} for r in workload]}
    advanced = []
    run = bench_vllm.run_vllm(spec, workload, lambda: advanced.append(1), python=Path(sys.executable))
    assert run.name == "vllm" and run.wall_s == 1.5 and len(advanced) == 2
    assert [r.num_output_tokens for r in run.results] == [2, 3]
    assert run.extra["vllm_settings"]["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"

    child.write_text("import sys\nprint('vllm exploded', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(ValueError, match=r"(?s)exit 3.*vllm exploded"):
        bench_vllm.run_vllm(spec, workload, lambda: None, python=Path(sys.executable))
    json.dumps(run.extra)  # goes into the bench JSON as is
