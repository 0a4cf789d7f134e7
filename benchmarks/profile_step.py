"""Where one engine step's time goes: a batch-32 decode step and a 2048-token prefill step of SmolLM2-135M,
split into linears, attention (KV writes included), norms, rotary, activation, the LM head, the rest of the
forward (embedding, Python between the ops), sampling, step metadata, scheduling and the update.

Each step is measured twice: op by op (the model's decoder_plan off, so every kernel call is timed) and as
the engine serves it, with all decoder layers in one C++ call (kernels.decoder_layers, "fused layers": the
same kernels without the Python between them) where the model has a plan.

    python benchmarks/profile_step.py [--model smollm2-135m] [--dtype bfloat16] [--threads 2] [--json FILE]

Every kernel the model reaches through llmctl.kernels is wrapped with a timer (CPU ops are synchronous, so a
call's wall time is its cost, dispatch included); the forward's remainder is "forward glue". Prints a table of
ms and % of the step (median over the measured steps) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "kernels"), str(ROOT / "agent")]

# kernels.<name> -> category
KERNEL_CATEGORY = {
    "linear": "linears",
    "w8a16_linear": "linears",
    "awq_linear": "linears",
    "w8a16_linear_packed": "linears",
    "awq_linear_packed": "linears",
    "rms_norm": "norms",
    "rotary_embedding": "rotary",
    "silu_and_mul": "activation",
    "write_kv": "attention",
    "paged_attention_decode": "attention",
    "prefill_attention": "attention",
    "decoder_layers": "fused layers",
}
ORDER = ("fused layers", "linears", "lm head", "attention", "norms", "rotary", "activation", "forward glue",
         "sampling", "metadata", "scheduling", "update")


class Clock:
    """Accumulates seconds per category for the current step."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)
        self.depth = 0

    def wrap(self, category, fn):
        """`category`: a name, or a function of the call's arguments that returns one."""
        def timed(*args, **kwargs):
            if self.depth:  # a kernel calling another kernel counts once, in the outer category
                return fn(*args, **kwargs)
            self.depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                name = category(*args, **kwargs) if callable(category) else category
                self.step[name] += time.perf_counter() - t
                self.depth -= 1

        return timed


def instrument(engine, clock: Clock) -> None:
    import llmctl.kernels as kernels

    runner, model = engine.runner, engine.runner.model
    for name, category in KERNEL_CATEGORY.items():
        if name == "linear":  # the LM head is the forward's last linear: timed apart from the decoder's
            category = lambda x, weight, bias=None: "lm head" if weight is model.head_weight else "linears"  # noqa: E731
        setattr(kernels, name, clock.wrap(category, getattr(kernels, name)))

    def forward(batch, kv_caches, _orig=type(model).forward):
        t = time.perf_counter()
        before = sum(clock.step.values())
        out = _orig(model, batch, kv_caches)
        inside = sum(clock.step.values()) - before
        clock.step["forward glue"] += time.perf_counter() - t - inside
        return out

    model.forward = forward
    runner.prepare = clock.wrap("metadata", runner.prepare)
    engine.sampler = clock.wrap("sampling", engine.sampler)
    engine.scheduler.schedule = clock.wrap("scheduling", engine.scheduler.schedule)
    engine._update = clock.wrap("update", engine._update)


def measure(engine, clock: Clock, steps: int) -> tuple[list[dict], list[float]]:
    per_step, walls = [], []
    for _ in range(steps):
        clock.step = defaultdict(float)
        t = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - t)
        per_step.append(dict(clock.step))
    return per_step, walls


def summarize(name: str, per_step: list[dict], walls: list[float], tokens: int) -> dict:
    wall = statistics.median(walls)
    cats = {c: statistics.median(s.get(c, 0.0) for s in per_step) for c in ORDER}
    cats["other"] = max(0.0, wall - sum(cats.values()))
    return {"name": name, "step_ms": wall * 1e3, "tokens": tokens, "steps": len(walls),
            "ms": {c: v * 1e3 for c, v in cats.items()}}


def print_table(results: list[dict]) -> None:
    header = f"{'':<14}" + "".join(f"{r['name']:>26}" for r in results)
    print(header)
    for c in (*ORDER, "other"):
        row = f"{c:<14}"
        for r in results:
            ms = r["ms"][c]
            row += f"{ms:>16.2f} ms {100 * ms / r['step_ms']:>5.1f}%"
        print(row)
    print(f"{'step':<14}" + "".join(f"{r['step_ms']:>16.2f} ms {'':>6}" for r in results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--mixed", action="store_true",
                    help="also the bench's mixed workload (64 requests, prompts 32-512, outputs 16-256, seed 0), "
                         "op by op, all at once: totals over the whole run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import random

    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.engine.engine import LLMEngine
    from llmctl.agent.engine.sampling import SamplingParams

    engine = LLMEngine(EngineConfig(
        model=args.model, dtype=args.dtype, num_threads=args.threads, enable_prefix_caching=False,
        quantization=args.quantization,
    ))
    clock = Clock()
    instrument(engine, clock)
    rng = random.Random(0)
    vocab = engine.info.vocab_size
    results = []

    model = engine.runner.model
    plan = model.decoder_plan
    modes = [("op by op", None)] + ([("fused", plan)] if plan is not None else [])

    # Decode: `batch` sequences of 40-token prompts, measured once every prompt is in and 24 tokens are out.
    for mode, mode_plan in modes:
        model.decoder_plan = mode_plan
        params = SamplingParams(temperature=0.0, max_tokens=24 + args.steps + 8, ignore_eos=True)
        for i in range(args.batch):
            engine.add_request(f"d{mode}{i}", [rng.randrange(100, vocab) for _ in range(40)], params)
        for _ in range(24):
            engine.step()
        per_step, walls = measure(engine, clock, args.steps)
        results.append(summarize(f"decode b={args.batch} {mode}", per_step, walls, args.batch))
        while engine.has_unfinished():
            engine.step()

    # Prefill: four 512-token prompts fill one 2048-token step.
    for mode, mode_plan in modes:
        model.decoder_plan = mode_plan
        per_step, walls = [], []
        for rep in range(max(3, args.steps // 4)):
            params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
            for i in range(4):
                engine.add_request(f"p{mode}{rep}-{i}", [rng.randrange(100, vocab) for _ in range(512)], params)
            s, w = measure(engine, clock, 1)
            per_step += s
            walls += w
            while engine.has_unfinished():
                engine.step()
        results.append(summarize(f"prefill 4x512 {mode}", per_step[1:], walls[1:], 2048))
    if args.mixed:
        from llmctl.agent.bench import BenchOptions, engine_params, make_workload

        model.decoder_plan = None
        for req in make_workload(engine.tokenizer, BenchOptions(requests=64, seed=0)):
            engine.add_request(f"m{req.index}", req.prompt_token_ids, engine_params(req.output_len))
        total, steps, t0 = defaultdict(float), 0, time.perf_counter()
        while engine.has_unfinished():
            clock.step = defaultdict(float)
            engine.step()
            steps += 1
            for category, seconds in clock.step.items():
                total[category] += seconds
        wall = time.perf_counter() - t0
        results.append(summarize(f"mixed 64 ({steps} steps)", [total], [wall], 0))
    model.decoder_plan = plan

    print(f"{args.model} {args.dtype}, {args.threads} threads, median of the measured steps")
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "dtype": args.dtype,
                                               "threads": args.threads, "steps": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
