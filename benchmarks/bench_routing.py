"""Model routing on a mixed workload: how much of it the companion takes, how much load leaves the main
deployment, and what happens when the companion dies mid-run.

Two real replicas, each `llmctl serve` of the demo model smollm2-135m in a process of its own (scratch
LLMCTL_HOME, one torch thread each): one serves the main deployment "big", the other the companion "small".
Main and companion are the SAME model here (the box has one demo model): what is measured is where the work
goes, not answer quality. A real gateway (build_gateway_app in this process under uvicorn, a SQLite store, one
tenant) fronts both. The workload is recorded from a seed: `--simple-share` short simple chats (greetings,
thanks, one-line lookups and translations; none of them in the classifier's training set) and long prompts
(a ~400-token passage plus a question that needs it). Arms, each sending the same workload
`--concurrency` at a time, with the arm's name at the start of every prompt so the replicas' prefix caches
give no arm another's prompts:

  no route             every request to big: the baseline load
  max-prompt-tokens=N  the length rule
  classifier           the project's trained classifier
  companion killed     the length rule, with the companion's process SIGKILLed after half the requests (the
                       route table still lists it, as before a reconciler notices): every later simple
                       request fails over to big; the arm counts failed requests

Per arm: share routed (gateway decisions), requests failed, and big's load from its own /metrics (requests
finished, prompt tokens computed = admitted minus prefix-cache hits, output tokens), as the reduction
against the baseline. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_routing.py --json benchmarks/results/routing.json
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.factories

from benchmarks.gateway_bench import scratch_tenant, start_replica, wait_healthy  # noqa: E402
from tests.factories import serve_app  # noqa: E402

MODEL = Path.home() / ".cache" / "llmctl" / "models" / "smollm2-135m"
SIMPLE = ["hi!", "hello, are you there?", "thanks, that helped", "thank you very much!", "good morning",
          "what is the capital of Italy?", "how many days are in June?", "translate 'apple' to German",
          "how do you say 'good night' in Spanish?", "what is 6 times 7?", "spell 'separate'",
          "who wrote Don Quixote?", "what color is a ripe banana?", "convert 10 miles to km",
          "what is the plural of child?", "bye, see you tomorrow", "is 13 a prime number?",
          "what does DNA stand for?", "name a green vegetable", "what is the opposite of tall?"]
PASSAGE = ("The control plane keeps deployments and their immutable revisions in SQL and reconciles desired "
           "replicas onto agents. Each agent hosts an inference engine with a paged KV cache: keys and values "
           "live in fixed-size blocks, sequences own block tables rather than tensors, and a block's hash "
           "chains its parent's hash with its token ids so that requests sharing a system prompt reuse the "
           "same blocks. The scheduler runs iteration-level continuous batching: every step it admits "
           "waiting requests while KV blocks and the token budget allow, splits long prompts into chunks, "
           "and preempts the newest running sequence when blocks run out, freeing its blocks and requeueing "
           "it for recomputation. The gateway authenticates tenants, applies per-tenant request and token "
           "rate limits, routes each request to a replica by prefix affinity on a consistent-hash ring, "
           "fails over to another replica when one cannot be reached before the first byte, and samples a "
           "fraction of answers for quality scoring against a reference revision. ")
QUESTIONS = ["Using the passage, explain why preemption never loses a request.",
             "Based on the text, describe how prefix caching saves work for shared system prompts.",
             "From the passage, compare what the scheduler and the gateway each decide.",
             "According to the passage, what happens when a replica fails before answering, and why then?",
             "Summarize the passage's data path from a client request to a generated token."]


def record_workload(n: int, simple_share: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    simple = set(rng.sample(range(n), round(n * simple_share)))
    return [{"simple": True, "text": rng.choice(SIMPLE)} if i in simple else
            {"simple": False, "text": PASSAGE * 2 + rng.choice(QUESTIONS)} for i in range(n)]


def scrape(url: str) -> dict[str, float]:
    """A replica's cumulative requests, prompt tokens computed (admitted minus prefix-cache hits) and admitted,
    and output tokens."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            total[s.name] = total.get(s.name, 0.0) + s.value
    return {"requests": total.get("llmctl_requests_finished_total", 0.0),
            "prompt_tokens": total.get("llmctl_prompt_tokens_total", 0.0)
            - total.get("llmctl_prefix_cache_hits_total", 0.0),
            "prompt_tokens_admitted": total.get("llmctl_prompt_tokens_total", 0.0),
            "output_tokens": total.get("llmctl_generation_tokens_total", 0.0)}


def gateway_decisions(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "llmctl_gateway_route_decisions_total":
                out[s.labels["decision"]] = out.get(s.labels["decision"], 0.0) + s.value
    return out


def send(client: httpx.Client, gateway: str, key: str, item: dict, arm: str, max_tokens: int) -> dict:
    body = {"model": "big", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"[{arm}] {item['text']}"}]}
    start = time.perf_counter()
    try:
        r = client.post(gateway + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        status = r.status_code
        routed = r.headers.get("x-llmctl-routed-to")
    except httpx.HTTPError:
        status, routed = 0, None
    return {"status": status, "routed": routed, "seconds": time.perf_counter() - start}


def run_arm(arm: str, rule: str | None, workload: list[dict], *, routes, db, key: str, replicas: dict,
            args: argparse.Namespace, kill_after: int | None = None, companion: subprocess.Popen | None = None
            ) -> dict:
    from llmctl.controlplane.gateway.app import build_gateway_app
    from llmctl.controlplane.gateway.model_route import ModelRoute, ModelRouteTable, parse_rule

    table = ModelRouteTable()
    if rule is not None:
        table.replace({"big": ModelRoute("big", "small", parse_rule(rule), args.concurrency)})
    before = {name: scrape(url) for name, url in replicas.items()}
    app = build_gateway_app(routes=routes, db_factory=db, model_routes=table)
    with serve_app(app) as gateway, httpx.Client(timeout=300) as client, \
            ThreadPoolExecutor(args.concurrency) as pool:
        started = time.perf_counter()
        if kill_after is None:
            sent = list(pool.map(lambda item: send(client, gateway, key, item, arm, args.max_tokens), workload))
        else:
            first = list(pool.map(lambda item: send(client, gateway, key, item, arm, args.max_tokens),
                                  workload[:kill_after]))
            assert companion is not None
            companion.send_signal(signal.SIGKILL)
            companion.wait()
            rest = list(pool.map(lambda item: send(client, gateway, key, item, arm, args.max_tokens),
                                 workload[kill_after:]))
            sent = first + rest
        wall = time.perf_counter() - started
        decisions = gateway_decisions(gateway)
    after = {name: scrape(url) for name, url in replicas.items() if not (kill_after and name == "small")}
    load = {name: {k: after[name][k] - before[name][k] for k in after[name]} for name in after}
    return {"arm": arm, "rule": rule, "requests": len(sent), "failed": sum(s["status"] != 200 for s in sent),
            "routed": sum(s["routed"] == "small" for s in sent),
            "simple": sum(item["simple"] for item in workload),
            "simple_routed": sum(s["routed"] == "small" for s, item in zip(sent, workload, strict=True)
                                 if item["simple"]),
            "complex_routed": sum(s["routed"] == "small" for s, item in zip(sent, workload, strict=True)
                                  if not item["simple"]),
            "decisions": decisions, "wall_s": round(wall, 2),
            "p50_s": round(statistics.median(s["seconds"] for s in sent), 3),
            "load": load, "companion_killed_after": kill_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="Per arm")
    parser.add_argument("--simple-share", type=float, default=0.6)
    parser.add_argument("--max-prompt-tokens", type=int, default=64, help="The length rule's limit")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=MODEL, help="HF folder of the model (default: the demo model)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"no model at {args.model}; run `llmctl models pull smollm2-135m` first")

    from llmctl.controlplane.gateway.routes import Endpoint, RouteTable

    home, db, key = scratch_tenant("bench-routing-")
    workload = record_workload(args.requests, args.simple_share, args.seed)

    procs = {name: start_replica(args.model, name, home, threads=1) for name in ("big", "small")}
    replicas = {name: url for name, (_, url) in procs.items()}
    results = []
    try:
        for proc, url in procs.values():
            wait_healthy(proc, url, home)
        routes = RouteTable()
        routes.set_endpoints("big", [Endpoint(1, replicas["big"], "big", 1)])
        routes.set_endpoints("small", [Endpoint(2, replicas["small"], "small", 1)])
        with httpx.Client(timeout=300) as client:  # first-call costs out of every arm
            for name, url in replicas.items():
                for item in record_workload(2, 0.5, 99):
                    r = client.post(url + "/v1/chat/completions", json={
                        "model": name, "max_tokens": args.max_tokens,
                        "messages": [{"role": "user", "content": "[warm] " + item["text"]}]})
                    assert r.status_code == 200, r.text
        length_rule = f"max-prompt-tokens={args.max_prompt_tokens}"
        common = dict(routes=routes, db=db, key=key, replicas=replicas, args=args)
        results.append(run_arm("no route", None, workload, **common))
        results.append(run_arm(length_rule, length_rule, workload, **common))
        results.append(run_arm("classifier", "classifier", workload, **common))
        results.append(run_arm("companion killed", length_rule, workload, **common,
                               kill_after=len(workload) // 2, companion=procs["small"][0]))
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    base = results[0]["load"]["big"]
    for r in results:
        big = r["load"]["big"]
        r["big_reduction"] = {k: round(1 - big[k] / base[k], 3) if base[k] else None for k in base}
    print(f"workload: {args.requests} chat requests, {args.simple_share:.0%} simple; main (big) and companion "
          "(small) both smollm2-135m; big's load reduction vs 'no route' in brackets")
    print(f"{'arm':<22}{'routed':>7}{'simple->small':>15}{'complex->small':>16}{'failed':>7}"
          f"{'big requests':>16}{'big prompt tok':>18}{'big output tok':>18}{'p50 s':>7}")
    for r in results:
        big, red = r["load"]["big"], r["big_reduction"]
        cells = [f"{big[k]:.0f} ({red[k]:.0%})" for k in ("requests", "prompt_tokens", "output_tokens")]
        print(f"{r['arm']:<22}{r['routed'] / r['requests']:>7.0%}"
              f"{r['simple_routed']:>9}/{r['simple']:<5}{r['complex_routed']:>10}/{r['requests'] - r['simple']:<5}"
              f"{r['failed']:>7}{cells[0]:>16}{cells[1]:>18}{cells[2]:>18}{r['p50_s']:>7.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": "smollm2-135m (main and companion: the same model, one replica each, --threads 1)",
            "requests_per_arm": args.requests, "simple_share": args.simple_share,
            "max_prompt_tokens": args.max_prompt_tokens, "max_tokens": args.max_tokens,
            "concurrency": args.concurrency, "seed": args.seed, "arms": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    failed = sum(r["failed"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
