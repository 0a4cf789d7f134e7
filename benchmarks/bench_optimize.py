"""`llmctl optimize` end to end, recorded: a control plane and an agent serve SmolLM2 (float32) as "chat" with
a KV pool of 16 blocks and max_num_seqs 4, far too small for its workload (it preempts), and one optimization
run (goal throughput, max quality drop 2%) works on it with real trial replicas and real measurements. Prints
the run's report and writes it as JSON (with the wall time) and as markdown; docs/optimizer.md has them.

    .venv/bin/python benchmarks/bench_optimize.py --json benchmarks/results/optimize-e2e.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.e2e (the protocol)

from tests.e2e.conftest import Processes, processes_under, stop  # noqa: E402
from tests.e2e.optimize_protocol import TECHNIQUES, OptimizeFleet  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--techniques", default="auto",
                        help=f"Comma-separated (the e2e test's: {TECHNIQUES}); 'auto' lets the bottleneck choose")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep the run's folder (logs, database)")
    args = parser.parse_args(argv)

    from llmctl.agent.models import pull

    model = str(pull("smollm2-135m"))
    tmp = Path(tempfile.mkdtemp(prefix="optimize-e2e-"))
    processes = Processes(tmp)
    try:
        fleet = OptimizeFleet(tmp, processes, model)
        fleet.deploy()
        started = time.monotonic()
        flags = ["--repeats", str(args.repeats)]
        if args.techniques != "auto":
            flags += ["--techniques", args.techniques]
        run_id = fleet.optimize(*flags)
        report = fleet.wait(run_id, 3 * 3600)
        wall_s = time.monotonic() - started
        markdown = fleet.cli("optimize", "report", str(run_id), "--format", "markdown", "--traffic", "50M")
        table = fleet.cli("optimize", "report", str(run_id))
    finally:
        for process in reversed(processes.started):
            stop(process)
        for process in processes_under(tmp):
            process.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table)
    print(f"wall time {wall_s:.0f} s (start to end of the run, rollout not included)")
    if args.json is not None:
        args.json.write_text(json.dumps({"wall_s": wall_s, "report": report}, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(markdown)
        print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
    return 0 if report["state"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
