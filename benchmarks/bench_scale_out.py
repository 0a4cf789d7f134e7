"""Does a second CPU replica on the same host add service or take it away? One fixed concurrent load (8 chat
requests of 150 tokens, greedy, spread round-robin over the replicas as the gateway spreads them) against:

  1 replica   pinned by the agent to every core (what a lone replica gets)
  2 replicas  pinned to disjoint halves of the cores, one torch thread per core (the agent's default)
  2 unpinned  both on every core with torch's default thread count (before issue 14: they thrash)

Real `llmctl serve` processes started by the agent's ReplicaSupervisor, real HTTP, the demo model.

    python benchmarks/bench_scale_out.py [--model smollm2-135m] [--requests 8] [--max-tokens 150]
        [--rounds 5] [--skip-unpinned] [--json FILE]

Each setup runs the load --rounds times on the same replicas (a round at 8 requests lasts about 3 s, so one
round is at the mercy of whatever else wakes on the box); the table gives the median round and the range.
Prints output tokens/s per setup and its ratio to one replica; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT / "controlplane"), str(ROOT / "kernels")]

from llmctl.agent.cpu_slots import usable_cpus  # noqa: E402
from llmctl.agent.replicas import ReplicaState, ReplicaStatus, ReplicaSupervisor  # noqa: E402

PROMPTS = ["Tell me a long story about a lighthouse keeper.", "Explain how a steam engine works, step by step.",
           "Write a letter to a friend about a trip to the mountains.", "Describe the history of the bicycle."]


def start_replicas(sup: ReplicaSupervisor, count: int, model: str, engine: dict, events: list,
                   cond: threading.Condition) -> list[str]:
    for replica_id in range(1, count + 1):
        sup.start(replica_id, deployment="chat", revision=1, model=model, engine_config=engine,
                  served_model_name="chat")
    deadline = time.monotonic() + 600
    with cond:
        while True:
            ready = {s.replica_id: s.url for s in events if s.state is ReplicaState.READY}
            failed = [s.error for s in events if s.state is ReplicaState.FAILED]
            if failed:
                raise RuntimeError(f"a replica failed: {failed[0]}")
            if len(ready) == count:
                return [ready[i] for i in sorted(ready)]
            if not cond.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("replicas not READY in 600 s")


def run_load(urls: list[str], requests: int, max_tokens: int) -> dict:
    def one(i: int) -> int:
        r = httpx.post(f"{urls[i % len(urls)]}/v1/chat/completions", timeout=900, json={
            "model": "chat", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        })
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    t = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        tokens = sum(pool.map(one, range(requests)))
    wall = time.perf_counter() - t
    return {"wall_s": wall, "output_tokens": tokens, "tokens_per_s": tokens / wall}


def measure(name: str, count: int, cpus: list[int] | None, args) -> dict:
    events: list[ReplicaStatus] = []
    cond = threading.Condition()

    def record(status: ReplicaStatus) -> None:
        with cond:
            events.append(status)
            cond.notify_all()

    with tempfile.TemporaryDirectory() as logs, \
            ReplicaSupervisor(record, log_dir=logs, cpus=cpus) as sup:
        urls = start_replicas(sup, count, args.model, {}, events, cond)
        run_load(urls, len(urls), 8)  # warm every replica's first request path
        rounds = [run_load(urls, args.requests, args.max_tokens) for _ in range(args.rounds)]
    rates = sorted(r["tokens_per_s"] for r in rounds)
    result = {"setup": name, "replicas": count, "pinned": cpus is not None,
              "tokens_per_s": statistics.median(rates), "min_tokens_per_s": rates[0], "max_tokens_per_s": rates[-1],
              "wall_s": statistics.median(r["wall_s"] for r in rounds), "rounds": rounds}
    print(f"  {name}: median {result['tokens_per_s']:.1f} tok/s over {len(rates)} rounds "
          f"({rates[0]:.1f}-{rates[-1]:.1f})", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=5, help="load rounds per setup; the median is reported")
    ap.add_argument("--skip-unpinned", action="store_true", help="leave out the thrashing setup (slow)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cpus = usable_cpus()
    setups = [("1 replica", 1, cpus), ("2 replicas", 2, cpus)]
    if not args.skip_unpinned:
        setups.append(("2 unpinned", 2, None))
    print(f"{args.model}: {args.requests} concurrent requests x {args.max_tokens} tokens on {len(cpus)} core(s)")
    rows = [measure(name, count, sets, args) for name, count, sets in setups]
    base = rows[0]["tokens_per_s"]
    print(f"\n{'setup':<12}{'tok/s':>10}{'range':>16}{'wall s':>8}{'vs 1':>8}")
    for row in rows:
        row["ratio_vs_one"] = row["tokens_per_s"] / base
        span = f"{row['min_tokens_per_s']:.0f}-{row['max_tokens_per_s']:.0f}"
        print(f"{row['setup']:<12}{row['tokens_per_s']:>10.1f}{span:>16}{row['wall_s']:>8.1f}"
              f"{row['ratio_vs_one']:>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "cores": len(cpus), "requests": args.requests,
                                               "max_tokens": args.max_tokens, "rows": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
