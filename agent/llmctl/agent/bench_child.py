"""One engine target of `llmctl bench --isolate-runs`, in a process of its own.

Two engines run one after the other in one process are not measured alike on a CPU: on the 2-core box the
second engine's decode steps took 4-9% longer than the first's, whichever config it was (engine.step timed
inside `llmctl bench --compare-speculative`, both orders). A server runs one engine per process, so a
comparison of two configs is fairest with each in a fresh process: the parent writes the config, workload
and warm-up prompts as JSON, this child runs `run_engine_target` on them and writes the token times back.

    python -m llmctl.agent.bench_child SPEC.json RESULT.json
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from llmctl.agent.bench import (
    Advance,
    BenchRequest,
    RequestResult,
    RunResult,
    request_dicts,
    run_engine_target,
)


def run_isolated(name: str, config, workload: list[BenchRequest], warmup: list[list[int]],
                 advance: Advance) -> RunResult:
    """run_engine_target in a child process; the progress bar moves once the child is done."""
    spec = {
        "name": name, "config": config.to_dict(), "warmup": warmup,
        "requests": request_dicts(workload),
    }
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-") as scratch:
        spec_path, result_path = Path(scratch, "spec.json"), Path(scratch, "result.json")
        spec_path.write_text(json.dumps(spec))
        done = subprocess.run([sys.executable, "-m", "llmctl.agent.bench_child", str(spec_path), str(result_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"the isolated engine run {name} failed (exit {done.returncode}):\n{tail}")
        result = json.loads(result_path.read_text())
    for _ in workload:
        advance()
    results = [RequestResult(r["index"], r["arrival_s"], r["token_times"]) for r in result["results"]]
    return RunResult(name, results, result["wall_s"], result["extra"])


def main(spec_path: str, result_path: str) -> None:
    from llmctl.agent.engine.config import EngineConfig

    spec = json.loads(Path(spec_path).read_text())
    workload = [BenchRequest(r["index"], r["prompt_token_ids"], r["output_len"], r["arrival_s"])
                for r in spec["requests"]]
    run = asyncio.run(run_engine_target(spec["name"], EngineConfig.from_dict(spec["config"]), workload,
                                        spec["warmup"], lambda: None))
    Path(result_path).write_text(json.dumps({
        "wall_s": run.wall_s, "extra": run.extra,
        "results": [{"index": r.index, "arrival_s": r.arrival_s, "token_times": r.token_times}
                    for r in run.results],
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
