"""The vLLM baseline's child process: runs in the peer virtualenv (`make peers`), imports vLLM and the
standard library only, never llmctl. `python vllm_child.py SPEC.json RESULT.json`.

SPEC holds the model folder, the engine settings and the workload as token ids. vLLM's offline engine is
driven the way `LLM.generate` drives it (add requests, step until done), except that each request is
added at its arrival time and every step's new tokens are timestamped, so TTFT and ITL mean what they
mean for the other targets. One line per finished request on stdout ("done N") lets the parent advance
its progress bar.
"""

from __future__ import annotations

import json
import os
import sys
import time


def configure_environment(spec: dict) -> None:
    """vLLM reads these at import. Its CPU worker binds one OpenMP thread per listed core; "auto" would
    keep a core back for the scheduler process, which on a 2-core box halves the engine."""
    threads = spec["num_threads"]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_llm(spec: dict):
    from vllm import LLM

    return LLM(
        model=spec["model"],
        dtype=spec["dtype"],
        max_model_len=spec["max_model_len"],
        max_num_seqs=spec["max_num_seqs"],
        max_num_batched_tokens=spec["max_num_batched_tokens"],
        enable_prefix_caching=spec["enable_prefix_caching"],
        kv_cache_memory_bytes=spec["kv_cache_bytes"],
        seed=spec["seed"],
    )


def greedy_params(max_tokens: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def drive(engine, requests: list[dict], tag: str, report: bool,
          params=greedy_params) -> tuple[dict[str, list[float]], float]:
    """Add each request to vLLM's LLMEngine at its arrival time, step until all are done. Returns token
    times per request id (seconds from the start) and the wall time."""
    pending = sorted(requests, key=lambda r: r["arrival_s"])
    times: dict[str, list[float]] = {}
    seen: dict[str, int] = {}
    t0 = time.perf_counter()
    while pending or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while pending and pending[0]["arrival_s"] <= now:
            req = pending.pop(0)
            rid = f"{tag}-{req['index']}"
            engine.add_request(rid, {"prompt_token_ids": req["prompt_token_ids"]}, params(req["output_len"]))
            times[rid], seen[rid] = [], 0
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[0]["arrival_s"] - (time.perf_counter() - t0)))
            continue
        for out in engine.step():
            stamp = time.perf_counter() - t0
            count = len(out.outputs[0].token_ids)
            times[out.request_id].extend([stamp] * (count - seen[out.request_id]))
            seen[out.request_id] = count
            if out.finished and report:
                print("done", out.request_id, flush=True)
    return times, time.perf_counter() - t0


def main(spec_path: str, result_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    configure_environment(spec)
    import vllm

    llm = build_llm(spec)
    warmup = [
        {"index": i, "prompt_token_ids": ids, "output_len": 4, "arrival_s": 0.0}
        for i, ids in enumerate(spec["warmup"])
    ]
    drive(llm.llm_engine, warmup, "warmup", report=False)
    times, wall = drive(llm.llm_engine, spec["requests"], "bench", report=True)
    result = {
        "token_times": {rid.removeprefix("bench-"): t for rid, t in times.items()},
        "wall_s": wall,
        "vllm_version": vllm.__version__,
        "settings": {
            key: os.environ.get(key)
            for key in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")
        },
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: vllm_child.py SPEC.json RESULT.json")
    main(sys.argv[1], sys.argv[2])
