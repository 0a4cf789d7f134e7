"""The response cache on a recorded mix with 30% exact repeats and 10% paraphrases: the same gateway with the
cache off, with the exact cache only, and on (the exact cache plus the semantic cache at its default
threshold).

One real replica (`llmctl serve` of the demo model smollm2-135m, a process of its own, scratch LLMCTL_HOME)
behind a real gateway (build_gateway_app in this process under uvicorn, a SQLite store, one tenant). The mix
is recorded from a seed: chat requests at temperature 0, a third of them streamed, of which `--repeat-share`
exactly repeat an earlier request of the mix and `--paraphrase-share` reword an earlier question (another
phrasing of the same form and topic, from PARAPHRASES). Each arm sends the same mix one request at a time;
its prompts start with the arm's name, so the replica's own prefix cache gives neither arm the other's
prompts. The embedding model is loaded before the "on" arm starts (once per gateway process, as in
production). Prints, per arm: exact and semantic hit rates, the paraphrases answered from cache, semantic
hits on requests that were not reworded (wrong answers), mean and p50 latency, and the output tokens the
replica computed (its llmctl_generation_tokens counter); writes JSON.

    .venv/bin/python benchmarks/bench_cache.py --json benchmarks/results/cache.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.factories

from benchmarks.gateway_bench import scratch_tenant, start_replica, wait_healthy  # noqa: E402
from tests.factories import serve_app  # noqa: E402

MODEL = Path.home() / ".cache" / "llmctl" / "models" / "smollm2-135m"
NAME = "smollm2-135m"
TOPICS = ["paged attention", "continuous batching", "prefix caching", "speculative decoding", "int8 weights",
          "AWQ quantization", "the KV cache", "chunked prefill", "rotary embeddings", "RMSNorm", "grouped-query "
          "attention", "a tokenizer", "top-p sampling", "temperature", "beam search", "a load balancer",
          "rate limiting", "token budgets", "autoscaling", "a rollback", "canary releases", "a hash ring",
          "Prometheus metrics", "TLS certificates", "a reconciler", "SQL migrations", "an API key",
          "GPU memory", "CPU threads", "a health check"]
FORMS = ["Explain {} in one sentence.", "Why does an inference server use {}?", "Give one risk of {}."]
PARAPHRASES = {  # how else a user asks the same; written as users would, not picked to pass the cache
    FORMS[0]: ["In one sentence, explain {}.", "Can you explain {} in one sentence?", "Explain {} in a single "
               "sentence."],
    FORMS[1]: ["Why would an inference server use {}?", "Why do inference servers use {}?"],
    FORMS[2]: ["What is one risk of {}?", "Name one risk of {}."],
}


def record_mix(n: int, repeat_share: float, seed: int, paraphrase_share: float = 0.0) -> list[dict]:
    """n requests; round(n * repeat_share) of them repeat an earlier one exactly and round(n * paraphrase_share)
    reword an earlier one, at random places."""
    rng = random.Random(seed)
    questions = [(form, topic) for topic in TOPICS for form in FORMS]
    rng.shuffle(questions)
    later = rng.sample(range(1, n), round(n * repeat_share) + round(n * paraphrase_share))
    repeats, paraphrases = set(later[:round(n * repeat_share)]), set(later[round(n * repeat_share):])
    mix: list[dict] = []
    for i in range(n):
        if i in repeats:
            earlier = rng.choice(mix)
            mix.append({**earlier, "kind": "repeat", "repeats": earlier.get("repeats", earlier["kind"])})
        elif i in paraphrases:
            original = rng.choice([m for m in mix if m["kind"] == "new"])
            form, topic = original["form"], original["topic"]
            mix.append({"question": rng.choice(PARAPHRASES[form]).format(topic), "form": form, "topic": topic,
                        "stream": rng.random() < 1 / 3, "kind": "paraphrase", "of": original["question"]})
        else:
            form, topic = questions.pop()
            mix.append({"question": form.format(topic), "form": form, "topic": topic,
                        "stream": rng.random() < 1 / 3, "kind": "new"})
    return mix


def reworded(item: dict) -> bool:
    """A paraphrase, or an exact repeat of one: a semantic hit on it serves the right answer."""
    return "paraphrase" in (item["kind"], item.get("repeats"))


def generated_tokens(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "llmctl_generation_tokens_total")


def send(client: httpx.Client, gateway: str, key: str, item: dict, arm: str, max_tokens: int) -> tuple[float, str]:
    body = {"model": NAME, "max_tokens": max_tokens, "temperature": 0, "stream": item["stream"],
            "messages": [{"role": "user", "content": f"[{arm}] {item['question']}"}]}
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    if item["stream"]:
        with client.stream("POST", gateway + "/v1/chat/completions", json=body, headers=headers) as r:
            r.read()
    else:
        r = client.post(gateway + "/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return time.perf_counter() - start, r.headers.get("x-llmctl-cache", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="Per arm")
    parser.add_argument("--repeat-share", type=float, default=0.3)
    parser.add_argument("--paraphrase-share", type=float, default=0.1)
    parser.add_argument("--threshold", type=float, default=None,
                        help="Semantic cache threshold of the 'on' arm (default: the gateway's default)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=MODEL, help="HF folder of the model (default: the demo model)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"no model at {args.model}; run `llmctl models pull smollm2-135m` first")

    from llmctl.controlplane.gateway.app import build_gateway_app
    from llmctl.controlplane.gateway.embedding import shared_embedder
    from llmctl.controlplane.gateway.response_cache import ResponseCacheConfig
    from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
    from llmctl.controlplane.gateway.semantic_cache import DEFAULT_THRESHOLD, SemanticTable

    home, db, key = scratch_tenant("bench-cache-")
    mix = record_mix(args.requests, args.repeat_share, args.seed, args.paraphrase_share)
    threshold = args.threshold if args.threshold is not None else DEFAULT_THRESHOLD
    (home / "mix.json").write_text(json.dumps(mix, indent=1))

    proc, replica = start_replica(args.model, NAME, home)
    results = []
    try:
        wait_healthy(proc, replica, home)
        routes = RouteTable()
        routes.set_endpoints(NAME, [Endpoint(1, replica, NAME, 1)])
        with httpx.Client(timeout=300) as client:
            for warm in range(3):  # compile paths and first-call costs out of both arms
                send(client, replica, key, {"question": f"Warm-up {warm}.", "stream": warm == 1}, "warm",
                     args.max_tokens)
            for arm, cache in (("cache off", None), ("exact only", ResponseCacheConfig()),
                               ("cache on", ResponseCacheConfig())):
                semantic = SemanticTable({NAME: threshold}) if arm == "cache on" else None
                if semantic is not None:
                    shared_embedder().embed(["warm-up"])  # the model loads once per gateway process
                app = build_gateway_app(routes=routes, db_factory=db, response_cache=cache, semantic=semantic)
                with serve_app(app) as gateway:
                    before = generated_tokens(replica)
                    sent = [send(client, gateway, key, item, arm, args.max_tokens) for item in mix]
                    computed = generated_tokens(replica) - before
                latencies = [s for s, _ in sent]
                states = [state for _, state in sent]
                results.append({
                    "arm": arm, "requests": len(sent), "hits": states.count("hit"),
                    "semantic_hits": states.count("semantic-hit"),
                    "paraphrases": sum(item["kind"] == "paraphrase" for item in mix),
                    "paraphrases_served": sum(item["kind"] == "paraphrase" and state in ("hit", "semantic-hit")
                                              for item, state in zip(mix, states, strict=True)),
                    "wrong_semantic_hits": sum(state == "semantic-hit" and not reworded(item)
                                               for item, state in zip(mix, states, strict=True)),
                    "states": states,
                    "mean_ms": statistics.fmean(latencies) * 1e3, "p50_ms": statistics.median(latencies) * 1e3,
                    "output_tokens_computed": int(computed),
                })
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print(f"{args.requests} chat requests per arm, {args.repeat_share:.0%} exact repeats, "
          f"{args.paraphrase_share:.0%} paraphrases, max_tokens {args.max_tokens}, temperature 0, model "
          f"{args.model.name}, one replica, sequential; 'cache on' = exact + semantic at {threshold:g}")
    print(f"{'arm':<10} {'exact hits':>10} {'semantic hits':>14} {'paraphrases served':>19} {'wrong':>6} "
          f"{'mean ms':>9} {'p50 ms':>9} {'output tokens computed':>23}")
    for r in results:
        served = f"{r['paraphrases_served']}/{r['paraphrases']}"
        print(f"{r['arm']:<10} {r['hits'] / r['requests']:>10.0%} {r['semantic_hits'] / r['requests']:>14.0%} "
              f"{served:>19} {r['wrong_semantic_hits']:>6} {r['mean_ms']:>9.1f} "
              f"{r['p50_ms']:>9.1f} {r['output_tokens_computed']:>23}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {**{k: str(v) for k, v in vars(args).items()},
                                                    "semantic_threshold": threshold}, "mix": mix,
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
