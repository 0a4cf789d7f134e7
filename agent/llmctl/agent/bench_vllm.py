"""The vLLM baseline of `llmctl bench`: vLLM's CPU build, in its own virtualenv (`make peers`), run as a
child process (agent/vllm_child.py) on exactly the same token ids, greedy, EOS ignored.

vLLM gets the engine's settings: dtype, max_num_seqs, max_num_batched_tokens, prefix caching, the KV pool's
bytes (1 GiB unless --kv-cache-memory says otherwise), the context limit and the thread count, its OpenMP
threads bound one per core. It runs after the other targets are done and their memory is freed, so the two
never share the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from llmctl.agent.bench import Advance, BenchRequest, RequestResult, RunResult, request_dicts

PEER_VENV = ".venv-vllm"
PYTHON_ENV = "LLMCTL_VLLM_PYTHON"
CHILD = Path(__file__).with_name("vllm_child.py")


def peer_python() -> Path:
    """The peer virtualenv's python: $LLMCTL_VLLM_PYTHON, else .venv-vllm in the current folder or in the
    checkout llmctl runs from. ValueError saying how to get one when there is none."""
    if os.environ.get(PYTHON_ENV):
        path = Path(os.environ[PYTHON_ENV])
        if not path.is_file():
            raise ValueError(f"{PYTHON_ENV}={path} is not a file")
        return path
    checkout = Path(__file__).resolve().parents[3]
    for root in (Path.cwd(), checkout):
        path = root / PEER_VENV / "bin" / "python"
        if path.is_file():
            return path
    raise ValueError(
        f"the vllm baseline needs vLLM's CPU build in its own virtualenv: run `make peers` in the llmctl "
        f"checkout (it creates {PEER_VENV}/), or set {PYTHON_ENV} to a python that imports vllm"
    )


def child_spec(folder: Path, dtype: str, config, max_model_len: int, workload: list[BenchRequest],
               warmup: list[list[int]]) -> dict:
    import torch

    from llmctl.agent.engine.engine import DEFAULT_CPU_KV_BYTES

    kv_bytes = config.kv_cache_memory or DEFAULT_CPU_KV_BYTES
    if config.num_kv_blocks is not None:
        raise ValueError("the vllm baseline sizes its KV pool in bytes: use --kv-cache-memory, not --num-kv-blocks")
    return {
        "model": str(folder),
        "dtype": dtype,
        "max_model_len": max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "enable_prefix_caching": config.enable_prefix_caching,
        "kv_cache_bytes": kv_bytes,
        "num_threads": config.num_threads or torch.get_num_threads(),
        "seed": 0,
        "warmup": warmup,
        "requests": request_dicts(workload),
    }


def run_vllm(spec: dict, workload: list[BenchRequest], advance: Advance, python: Path | None = None) -> RunResult:
    """Start the child, advance on each request it finishes, and read its token times back."""
    python = python or peer_python()
    with tempfile.TemporaryDirectory(prefix="llmctl-vllm-") as scratch:
        spec_path, result_path = Path(scratch, "spec.json"), Path(scratch, "result.json")
        spec_path.write_text(json.dumps(spec))
        log_path = Path(scratch, "stderr.log")
        with open(log_path, "w") as log:
            child = subprocess.Popen(
                [str(python), str(CHILD), str(spec_path), str(result_path)],
                stdout=subprocess.PIPE, stderr=log, text=True, stdin=subprocess.DEVNULL,
            )
            for line in child.stdout:
                if line.startswith("done "):
                    advance()
            code = child.wait()
        if code != 0 or not result_path.exists():
            tail = log_path.read_text()[-2000:]
            raise ValueError(f"the vllm baseline failed (exit {code}):\n{tail}")
        result = json.loads(result_path.read_text())
    times = result["token_times"]
    results = [RequestResult(r.index, r.arrival_s, times[str(r.index)]) for r in workload]
    extra = {"vllm_version": result["vllm_version"], "vllm_settings": {
        **{k: spec[k] for k in ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
                                "kv_cache_bytes", "num_threads", "max_model_len")},
        **result["settings"],
    }}
    return RunResult("vllm", results, result["wall_s"], extra)


def run_vllm_baseline(folder: Path, dtype: str, config, workload: list[BenchRequest], warmup: list[list[int]],
                      advance: Advance) -> RunResult:
    from transformers import AutoConfig

    model_max = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", None) or 2048
    max_model_len = min(config.max_model_len or model_max, model_max)
    python = peer_python()  # before writing anything: a missing peer is a one-line error
    return run_vllm(child_spec(folder, dtype, config, max_model_len, workload, warmup), workload, advance, python)
