"""Inject the faults of issue 16 into a fleet of real processes under load and report what clients saw.

A private PostgreSQL, `llmctl server` on it, two `llmctl agent` processes with one replica each (agent a
behind a TCP proxy), clients streaming chat completions; then, in order: the network between agent a and
the control plane cut for --cut seconds; PostgreSQL restarted (fast shutdown, straight back up), and down
for longer than the node timeout; kill -9 of the control plane (a new one 1 s later, as `llmctl up` does);
kill -9 of agent a while streams run on its replica. The fleet and the scenarios are the ones the tests use
(tests/e2e/fleet.py, tests/e2e/faults.py).

    python benchmarks/faults.py [--model smollm2-135m|tiny|PATH] [--json benchmarks/results/faults.json]

Prints one row per fault: requests sent, accepted (a 200), lost (accepted, then cut without an error event
or hung: must be 0), ended by an error event, retried on another replica, 5xx, refused, time to recover.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fleet and scenarios live with the tests

from tests.e2e import faults  # noqa: E402
from tests.e2e.fleet import Fleet  # noqa: E402

ENGINES = {
    "tiny": {"dtype": "float32", "num_threads": 1, "num_kv_blocks": 96, "max_model_len": 256, "max_num_seqs": 4},
    "smollm2-135m": {"num_threads": 1, "max_model_len": 512, "max_num_seqs": 4},
}


def model_ref(name: str, scratch: Path) -> str:
    if name == "tiny":
        from tests.factories import make_tiny_llama

        return str(make_tiny_llama(scratch / "tiny-llama"))
    if name == "smollm2-135m":
        from llmctl.agent.models import pull

        return str(pull(name))
    return name


def table(reports: list[faults.FaultReport]) -> str:
    head = ("fault", "sent", "accepted", "lost", "error event", "retried", "5xx", "refused", "recovered after")
    rows = [head]
    for r in reports:
        recovered = f"{r.recovered_s:.1f} s ({r.recovered})" if r.recovered_s is not None else "-"
        rows.append((r.fault, r.sent, r.accepted, r.lost, r.error_events, r.retried, r.http_5xx, r.refused,
                     recovered))
        if "gateway" in r.extra:
            g = r.extra["gateway"]
            rows.append(("  the same, through the gateway", g["sent"], g["accepted"], g["lost"], g["error_events"],
                         "-", g["http_5xx"], g["refused"], f"{g['recovered_s']} s (kill -> gateway serves)"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = [" | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny (random weights) or a path")
    parser.add_argument("--cut", type=float, default=2.5, help="seconds the agent's network stays cut")
    parser.add_argument("--node-timeout", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "faults.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    engine = ENGINES.get(args.model, ENGINES["smollm2-135m"])
    # Streams long enough that some are mid-way when the agent dies: the tiny model makes ~10x the tokens/s.
    stream_tokens = 160 if args.model == "tiny" else 48
    fleet = Fleet(scratch, model_ref(args.model, scratch), engine=engine, node_timeout_s=args.node_timeout)
    began = time.monotonic()
    reports: list[faults.FaultReport] = []
    try:
        fleet.start(timeout_s=600)
        print(f"fleet up in {time.monotonic() - began:.0f} s (logs in {scratch})", flush=True)
        steps = [
            lambda: faults.cut_network(fleet, cut_s=args.cut),
            lambda: faults.restart_postgres(fleet, down_s=0.0),
            lambda: faults.restart_postgres(fleet, down_s=args.node_timeout + 2),
            lambda: faults.kill_control_plane(fleet),
            lambda: faults.kill_agent(fleet, max_tokens=stream_tokens),
        ]
        for step in steps:
            reports.append(step())
            print(json.dumps(reports[-1].as_dict()), flush=True)
    finally:
        fleet.close()
    print()
    print(table(reports))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "model": args.model, "engine": engine, "node_timeout_s": args.node_timeout, "host": platform.node(),
        "cpus": os.cpu_count(), "faults": [r.as_dict() for r in reports],
        "lost_total": sum(r.lost for r in reports),
    }, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
