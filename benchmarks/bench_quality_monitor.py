"""Quality sampling's detection delay and false alarms, measured end to end with real processes and SmolLM2.

Each run starts a control plane and an agent, deploys SmolLM2 (float32) sampled at 100% with auto-rollback,
then sends greedy chat requests one at a time through the gateway (each waited for until the quality worker
has scored it): `--reference` requests to the float reference (a false alarm if it turns degraded), then an
int8-weight revision (`--int8` requests; about +0.5% perplexity: a false alarm if degraded), then a 4-bit
rtn4 revision (about +26%: detection, up to `--rtn4` requests) that should be rolled back. Prints a table and
writes JSON; docs/quality.md has the numbers.

    .venv/bin/python benchmarks/bench_quality_monitor.py --runs 2 --json benchmarks/results/quality-monitor.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.e2e (the protocol) and benchmarks (the prompts)

from benchmarks.quality_calibration import build_prompts  # noqa: E402
from tests.e2e.conftest import Processes, processes_under, stop  # noqa: E402
from tests.e2e.quality_protocol import Phase, run_protocol  # noqa: E402


def one_run(index: int, args: argparse.Namespace, model: str) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix=f"quality-monitor-{index}-"))
    processes = Processes(tmp)
    # Each run sees the prompts in another order, so runs are not replays of each other.
    prompts = build_prompts(args.reference + args.int8 + args.rtn4)
    shift = index * 37 % len(prompts)
    prompts = prompts[shift:] + prompts[:shift]
    phases = [Phase("reference", args.reference), Phase("int8", args.int8), Phase("rtn4", args.rtn4)]
    try:
        results = run_protocol(tmp, processes, model, [p for p in phases if p.requests], prompts)
    finally:
        for process in reversed(processes.started):
            stop(process)
        for process in processes_under(tmp):
            process.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return [asdict(r) for r in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--reference", type=int, default=200, help="Requests to the float reference")
    parser.add_argument("--int8", type=int, default=200, help="Requests to the int8 revision")
    parser.add_argument("--rtn4", type=int, default=100, help="Requests to the rtn4 revision, at most")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep each run's folder (logs, database)")
    args = parser.parse_args(argv)
    from llmctl.agent.models import pull

    model = str(pull("smollm2-135m"))
    runs, started = [], time.monotonic()
    for index in range(args.runs):
        runs.append(one_run(index, args, model))
        print(f"run {index + 1}: " + "; ".join(
            f"{r['name']} rev {r['revision']}: {r['sent']} sent, state {r['final_state']}"
            + (f", degraded after {r['degraded_after']}, rolled back to {r['rolled_back_to']}"
               if r["degraded_after"] else "") for r in runs[-1]), flush=True)
    print(f"\n{'phase':10s} {'runs':>4s} {'requests':>8s} {'degraded':>8s} {'after (each run)':>20s}")
    for name in ("reference", "int8", "rtn4"):
        rows = [r for run in runs for r in run if r["name"] == name]
        if rows:
            after = ",".join(str(r["degraded_after"]) if r["degraded_after"] else "-" for r in rows)
            print(f"{name:10s} {len(rows):4d} {sum(r['sent'] for r in rows):8d} "
                  f"{sum(r['degraded_after'] is not None for r in rows):8d} {after:>20s}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "seconds": time.monotonic() - started}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
