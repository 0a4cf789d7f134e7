"""The engine on Triton kernels (the interpreter here, compiled on a GPU) gives the reference path's
greedy output: a mixed batch with prefix caching and chunked prefill over a tiny random Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
from llmctl import kernels
from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.sampling import SamplingParams

assert kernels.BACKEND == sys.argv[2]
engine = LLMEngine(EngineConfig(model=sys.argv[1], dtype="float32", num_threads=1,
                                max_num_batched_tokens=48, enable_prefix_caching=True))
prompts = json.loads(sys.argv[3])
outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
stats = engine.stats()
print(json.dumps({"tokens": [o.output.token_ids for o in outs], "hits": stats.prefix_cache_hits}))
"""


def run_engine(model, backend: str, prompts) -> dict:
    env = dict(os.environ, LLMCTL_KERNELS=backend)
    if backend == "triton" and "TRITON_INTERPRET" not in env:
        pytest.fail("the Triton path needs TRITON_INTERPRET=1 without a GPU (tests/conftest.py sets it)")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model), backend, json.dumps(prompts)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_triton_kernels_reproduce_the_reference_engine_output(tiny_llama):
    shared = list(range(20, 60))  # 40 tokens: two full blocks shared by the second and third prompts
    prompts = [list(range(100, 170)), shared + [7, 8, 9], shared + list(range(200, 230)), [5, 6]]
    reference = run_engine(tiny_llama, "reference", prompts)
    triton = run_engine(tiny_llama, "triton", prompts)
    assert reference["hits"] > 0  # the mixed batch really used the prefix cache
    assert triton == reference
