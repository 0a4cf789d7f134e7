"""Calibration data for the served-answer quality monitor: answers from the float reference, int8 and rtn4
(greedy and sampled), each scored by the float reference. Writes JSON and prints a table.

    python benchmarks/quality_calibration.py [--prompts 150] [--max-tokens 48] [--configs reference,int8,rtn4]
                                             [--quick] [--out benchmarks/results/quality-calibration.json]

Each answer's scores, from one reference forward over chat-template(prompt) + tokens(answer text):
mean_logprob, the mean log-probability per answer token, and top1, the fraction of answer tokens that are
the reference's argmax. The answer text is re-tokenized (never the served ids), so every config's answers
go through the same path. Empty answers are skipped and counted. Sampled runs use seed = prompt index +
a per-run offset; reference/sampled/run2 is a second reference run with its own offset: the null case.
Needs scipy (Mann-Whitney U, Wilcoxon signed-rank).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import time
from pathlib import Path

import torch
from scipy.stats import mannwhitneyu, wilcoxon

from llmctl.agent.engine.config import QUANTIZATIONS, EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.sampling import SamplingParams

DATA = Path(__file__).resolve().parents[1] / "agent/llmctl/agent/engine/data"
REFERENCE = "reference"
REGIMES = {
    "greedy": dict(temperature=0.0),
    "sampled": dict(temperature=0.7, top_p=0.95),
}
SEED_STRIDE = 100_000
"""Sampled runs' seed offsets are multiples of this, so no two runs share a seed below that many prompts."""
SCORE_TOKENS = 2048
"""Tokens per score() call: bounds its float32 logits at SCORE_TOKENS x vocab (400 MB for SmolLM2)."""


# -- prompts ----------------------------------------------------------------------------------------
def question_prompts() -> list[str]:
    items = [json.loads(line) for line in (DATA / "mc_items.jsonl").read_text().splitlines() if line.strip()]
    return [f"Answer in one or two sentences: {item['question']}" for item in items]


def corpus_prompts() -> list[str]:
    """Per corpus paragraph, alternately: continue its first sentence, or summarize its first three."""
    paragraphs = [
        line.strip()
        for line in (DATA / "eval_corpus.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    prompts = []
    for k, paragraph in enumerate(paragraphs):
        sentences = re.split(r"(?<=[.!?])\s+", paragraph)
        if len(sentences) >= 3 and k % 2:
            prompts.append("Summarize in one sentence: " + " ".join(sentences[:3]))
        elif len(sentences[0]) >= 20:
            prompts.append(f"Continue this text: {sentences[0]}")
    return prompts


def spread(pool: list[str], n: int) -> list[str]:
    """n items evenly spaced over the pool (repeating it when n exceeds its size)."""
    return [
        pool[(i * len(pool)) // n % len(pool)] if n <= len(pool) else pool[i % len(pool)] for i in range(n)
    ]


def build_prompts(n: int) -> list[str]:
    """Two questions, then one corpus instruction, repeated: deterministic and mixed at any n."""
    n_corpus = n // 3
    questions, corpus = (
        iter(spread(question_prompts(), n - n_corpus)),
        iter(spread(corpus_prompts(), n_corpus)),
    )
    return [next(corpus) if i % 3 == 2 else next(questions) for i in range(n)]


# -- generation and scoring -------------------------------------------------------------------------
def make_engine(model: str, config: str, max_seqs: int) -> LLMEngine:
    quantization = None if config == REFERENCE else config
    return LLMEngine(
        EngineConfig(model=model, dtype="float32", quantization=quantization, max_num_seqs=max_seqs)
    )


def generate_runs(
    engine: LLMEngine,
    config: str,
    prompt_ids: list[list[int]],
    max_tokens: int,
    seed_offsets: dict[str, int],
    timings: dict[str, float],
) -> dict[str, list[str]]:
    """Answer texts of every regime (and the reference's second sampled run) for this config."""
    runs = {f"{config}/{regime}": regime for regime in REGIMES}
    if config == REFERENCE:
        runs[f"{REFERENCE}/sampled/run2"] = "sampled"
    answers = {}
    for name, regime in runs.items():
        offset = seed_offsets.get(name)
        params = [
            SamplingParams(
                max_tokens=max_tokens, seed=None if offset is None else offset + i, **REGIMES[regime]
            )
            for i in range(len(prompt_ids))
        ]
        start = time.perf_counter()
        answers[name] = [out.output.text for out in engine.generate(prompt_ids, params)]
        timings[f"generate {name}"] = round(time.perf_counter() - start, 1)
        print(f"  {name}: {timings[f'generate {name}']} s", flush=True)
    return answers


def score_run(reference: LLMEngine, prompt_ids: list[list[int]], texts: list[str]) -> tuple[list[dict], int]:
    """(one record per non-empty answer, number of empty answers skipped)."""
    todo = []
    for i, text in enumerate(texts):
        answer = reference.tokenizer.encode(text, add_special_tokens=False)
        if answer:
            todo.append((i, answer))
    records, batch, batch_tokens = [], [], 0
    for item in todo + [None]:
        size = 0 if item is None else len(prompt_ids[item[0]]) + len(item[1])
        if batch and (item is None or batch_tokens + size > SCORE_TOKENS):
            logits = reference.score([prompt_ids[i] + answer for i, answer in batch])
            records.extend(
                answer_scores(i, len(prompt_ids[i]), answer, rows, text=texts[i])
                for (i, answer), rows in zip(batch, logits, strict=True)
            )
            batch, batch_tokens = [], 0
        if item is not None:
            batch.append(item)
            batch_tokens += size
    return records, len(texts) - len(todo)


def answer_scores(prompt: int, prompt_len: int, answer: list[int], logits: torch.Tensor, text: str) -> dict:
    rows = logits[
        prompt_len - 1 : prompt_len - 1 + len(answer)
    ]  # [answer_len, vocab]: row j predicts answer[j]
    targets = torch.tensor(answer)[:, None]
    logprobs = rows.gather(1, targets)[:, 0] - rows.logsumexp(-1)
    top1 = (rows.argmax(-1) == targets[:, 0]).float().mean()
    return {
        "prompt": prompt,
        "tokens": len(answer),
        "mean_logprob": round(logprobs.mean().item(), 5),
        "top1": round(top1.item(), 5),
        "text": text,
    }


# -- report -----------------------------------------------------------------------------------------
SCORES = ("mean_logprob", "top1")


def describe(values: list[float]) -> str:
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):8.3f} {sd:6.3f} {q1:8.3f} {med:8.3f} {q3:8.3f}"


def compare(candidate: list[dict], reference: list[dict]) -> dict:
    """Candidate vs reference run: paired differences over shared prompts, one-sided tests (candidate lower)."""
    ref_by_prompt = {r["prompt"]: r for r in reference}
    pairs = [(c, ref_by_prompt[c["prompt"]]) for c in candidate if c["prompt"] in ref_by_prompt]
    out = {"pairs": len(pairs)}
    for score in SCORES:
        cand, ref = [r[score] for r in candidate], [r[score] for r in reference]
        diffs = [c[score] - r[score] for c, r in pairs]
        u = mannwhitneyu(cand, ref, alternative="less")
        out[score] = {
            "mean_paired_diff": statistics.fmean(diffs) if diffs else float("nan"),
            "mwu_p": float(u.pvalue),
            "auc": 1 - float(u.statistic) / (len(cand) * len(ref)),  # P(candidate < reference), ties half
            "wilcoxon_p": float(wilcoxon(diffs, alternative="less").pvalue) if any(diffs) else 1.0,
        }
    return out


def print_report(runs: dict[str, list[dict]], skipped: dict[str, int]) -> dict[str, dict]:
    print(
        f"\n{'run':26} {'n':>4} {'empty':>5} | {'mean_logprob: mean':>18} {'sd':>6} {'q1':>8} {'median':>8} "
        f"{'q3':>8} | {'top1: mean':>10} {'sd':>6} {'q1':>8} {'median':>8} {'q3':>8}"
    )
    for name, records in runs.items():
        if records:
            print(
                f"{name:26} {len(records):4d} {skipped[name]:5d} | {describe([r['mean_logprob'] for r in records]):>48}"
                f" | {describe([r['top1'] for r in records]):>44}"
            )
    comparisons = {}
    print(
        f"\n{'candidate vs reference':44} {'pairs':>5} | {'d_logprob':>9} {'MWU p':>9} {'AUC':>5} {'Wilc p':>9} | "
        f"{'d_top1':>7} {'MWU p':>9} {'AUC':>5} {'Wilc p':>9}"
    )
    for name, records in runs.items():
        regime = name.split("/")[1]
        base = f"{REFERENCE}/{regime}"
        if name == base or not records or not runs.get(base):
            continue
        c = comparisons[name] = compare(records, runs[base])
        lp, t1 = c["mean_logprob"], c["top1"]
        print(
            f"{name + ' vs ' + base:44} {c['pairs']:5d} | {lp['mean_paired_diff']:+9.4f} {lp['mwu_p']:9.2e} "
            f"{lp['auc']:5.3f} {lp['wilcoxon_p']:9.2e} | {t1['mean_paired_diff']:+7.4f} {t1['mwu_p']:9.2e} "
            f"{t1['auc']:5.3f} {t1['wilcoxon_p']:9.2e}"
        )
    return comparisons


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--configs",
        default=",".join((REFERENCE, "int8", "rtn4")),
        help=f"comma-separated from {REFERENCE},{','.join(QUANTIZATIONS)}; the reference always runs",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 prompts, 8 tokens")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality-calibration.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_tokens = 6, 8
    if args.prompts < 2 or args.max_tokens < 1:
        parser.error("--prompts must be >= 2 and --max-tokens >= 1")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - {REFERENCE, *QUANTIZATIONS}
    if unknown:
        parser.error(f"unknown configs: {', '.join(sorted(unknown))}")
    # Candidates first, the reference last: it generates its own runs, then scores everyone's, one engine alive.
    configs = [c for c in dict.fromkeys(configs) if c != REFERENCE] + [REFERENCE]
    prompts = build_prompts(args.prompts)
    sampled_runs = [f"{c}/sampled" for c in configs] + [f"{REFERENCE}/sampled/run2"]
    seed_offsets = {name: (k + 1) * SEED_STRIDE for k, name in enumerate(sampled_runs)}
    timings: dict[str, float] = {}
    answers: dict[str, list[str]] = {}
    started = time.perf_counter()
    prompt_ids = None
    for config in configs:
        start = time.perf_counter()
        engine = make_engine(args.model, config, min(args.prompts, 256))
        timings[f"load {config}"] = round(time.perf_counter() - start, 1)
        print(f"{config}: loaded in {timings[f'load {config}']} s", flush=True)
        # The chat template is the tokenizer's, identical in every config.
        prompt_ids = [engine.chat_prompt_ids([{"role": "user", "content": p}]) for p in prompts]
        answers.update(generate_runs(engine, config, prompt_ids, args.max_tokens, seed_offsets, timings))
        if config != REFERENCE:
            del engine
            gc.collect()
    start = time.perf_counter()
    runs, skipped = {}, {}
    order = [f"{c}/{r}" for r in REGIMES for c in [REFERENCE] + configs[:-1]]
    order.insert(order.index(f"{REFERENCE}/sampled") + 1, f"{REFERENCE}/sampled/run2")
    for name in order:
        runs[name], skipped[name] = score_run(engine, prompt_ids, answers[name])
    timings["score"] = round(time.perf_counter() - start, 1)
    timings["total"] = round(time.perf_counter() - started, 1)
    comparisons = print_report(runs, skipped)
    print(f"\ntimings (s): {json.dumps(timings)}")
    meta = {
        "model": args.model,
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "dtype": "float32",
        "regimes": REGIMES,
        "seed_offsets": seed_offsets,
        "skipped_empty": skipped,
        "seconds": timings,
        "torch_threads": torch.get_num_threads(),
        "comparisons": comparisons,
        "prompt_texts": prompts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
