"""Engine decode throughput with Triton vs reference kernels, each backend in its own process
(LLMCTL_KERNELS is read once at import), on a random-weight model of SmolLM2-135M's shape.
Writes <out>/engine.json and prints a table.

    python benchmarks/bench_engine_kernels.py [--device cuda] [--quick] [--out DIR]

Decode tokens/s counts only the steps after every request of the batch has its first token (all
prefills done); the whole generate (prefill included) is reported too. --quick: a 2-layer tiny model,
batch 1 and 4, reference kernels only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Runs from a checkout without an install too (the GPU check): the root for tests.factories, and the component
# folders that hold the portions of the llmctl namespace this needs.
SOURCE_PATH = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "agent")]
sys.path[:0] = SOURCE_PATH

SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)
RATIO_GOAL = 2.0  # Triton >= 2x reference decode tokens/s at the largest batch
RESULT_PREFIX = "RESULT "


# -- worker: one backend, one process ---------------------------------------------------------------
def run_batch(engine, batch: int, prompt_len: int, output_len: int, seed: int, device: str) -> dict:
    import torch

    from llmctl.agent.engine.sampling import SamplingParams

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    gen = torch.Generator().manual_seed(seed)
    vocab = engine.info.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    ids = [f"b{batch}-s{seed}-{i}" for i in range(batch)]
    sync()
    t_start = time.perf_counter()
    for rid in ids:
        engine.add_request(rid, torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(), params)
    started: set[str] = set()
    steps = tokens = 0
    t_decode = None
    while engine.has_unfinished():
        outs = engine.step()
        if t_decode is None:
            started.update(o.request_id for o in outs)
            if len(started) == batch:
                sync()
                t_decode = time.perf_counter()
        else:
            steps += 1
            tokens += len(outs)
    sync()
    t_end = time.perf_counter()
    decode_s = t_end - (t_decode if t_decode is not None else t_end)
    return {
        "batch": batch,
        "decode_tokens": tokens,
        "decode_steps": steps,
        "decode_s": decode_s,
        "decode_tokens_per_s": tokens / decode_s if decode_s > 0 else None,
        "ms_per_decode_step": 1e3 * decode_s / steps if steps else None,
        "total_s": t_end - t_start,
        "total_tokens_per_s": batch * output_len / (t_end - t_start),
    }


def worker(args) -> dict:
    from llmctl import kernels
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.engine.engine import LLMEngine

    t0 = time.perf_counter()
    config = EngineConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=max(args.batches),
        enable_prefix_caching=False,
    )
    engine = LLMEngine(config)
    load_s = time.perf_counter() - t0
    runs = []
    for batch in args.batches:
        # Warm-up at the same batch size: compiles the kernels for this shape's specialisations.
        run_batch(engine, batch, args.prompt_len, min(4, args.output_len), 1000 + batch, args.device)
        result = run_batch(engine, batch, args.prompt_len, args.output_len, batch, args.device)
        result["backend"] = kernels.BACKEND
        runs.append(result)
        rate = result["decode_tokens_per_s"]
        print(f"  {kernels.BACKEND:<9} batch {batch:>3}: {rate:9.1f} decode tok/s", flush=True)
    return {"backend": kernels.BACKEND, "load_s": load_s, "runs": runs}


# -- parent: build the model once, one worker per backend --------------------------------------------
def build_model(folder: Path, quick: bool) -> dict:
    from tests.factories import make_tiny_llama

    overrides = {} if quick else dict(SMOLLM2_SHAPE)
    make_tiny_llama(folder, **overrides)
    return overrides


def spawn(backend: str, args, model: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", "--model", str(model), "--device", args.device,
        "--dtype", args.dtype, "--prompt-len", str(args.prompt_len), "--output-len", str(args.output_len),
        "--batches", *map(str, args.batches),
    ]  # fmt: skip
    env = dict(os.environ, LLMCTL_KERNELS=backend)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*SOURCE_PATH, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired as exc:
        return {"backend": backend, "error": f"timed out after {exc.timeout} s"}
    lines = done.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith(RESULT_PREFIX)), flush=True)
    lines = [line for line in lines if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        return {"backend": backend, "error": f"exit {done.returncode}: {done.stderr[-3000:]}"}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def ratios(by_backend: dict, batches: list[int]) -> list[dict]:
    def rate(backend: str, batch: int):
        for run in by_backend.get(backend, {}).get("runs", []):
            if run["batch"] == batch:
                return run["decode_tokens_per_s"]
        return None

    out = []
    for batch in batches:
        fast, ref = rate("triton", batch), rate("reference", batch)
        ratio = fast / ref if fast and ref else None
        goal = RATIO_GOAL if batch == max(batches) else None
        out.append({
            "batch": batch,
            "triton_over_reference": ratio,
            "goal": goal,
            "meets_goal": None if goal is None or ratio is None else ratio >= goal,
        })  # fmt: skip
    return out


def print_table(data: dict) -> None:
    print(f"\n{'backend':<10} {'batch':>5} {'decode tok/s':>13} {'ms/step':>8} {'total tok/s':>12}")
    for backend, res in data["backends"].items():
        if "error" in res:
            last = res["error"].strip().splitlines()[-1:] or [""]
            print(f"{backend:<10} ERROR {last[0]}")
            continue
        for r in res["runs"]:
            print(
                f"{backend:<10} {r['batch']:>5} {r['decode_tokens_per_s']:>13.1f} "
                f"{r['ms_per_decode_step'] or 0:>8.2f} {r['total_tokens_per_s']:>12.1f}"
            )
    for r in data["ratios"]:
        if r["triton_over_reference"] is not None:
            goal = f" (goal >= {r['goal']:.0f}x: {'ok' if r['meets_goal'] else 'MISS'})" if r["goal"] else ""
            print(f"batch {r['batch']:>3}: triton / reference = {r['triton_over_reference']:.2f}x{goal}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="2-layer model, batch 1 and 4, reference only")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_out")
    parser.add_argument("--model", help="an existing HF Llama folder (default: build a random one)")
    parser.add_argument("--backends", nargs="+", choices=("triton", "reference"))
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--prompt-len", type=int)
    parser.add_argument("--output-len", type=int)
    parser.add_argument("--dtype", help="default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--worker-timeout", type=float, default=240.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not args.worker:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but torch sees no GPU; use --device cpu")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batches = args.batches or ([1, 4] if args.quick else [1, 16, 64])
    args.prompt_len = args.prompt_len or (16 if args.quick else 128)
    args.output_len = args.output_len or (8 if args.quick else 128)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return 0
    backends = args.backends or (["triton", "reference"] if cuda and not args.quick else ["reference"])

    with tempfile.TemporaryDirectory(prefix="llmctl-bench-model-") as tmp:
        model, shape = Path(args.model) if args.model else Path(tmp) / "model", {}
        if not args.model:
            t0 = time.perf_counter()
            shape = build_model(model, args.quick)
            took = time.perf_counter() - t0
            print(f"built a random-weight model {shape or '(2-layer tiny)'} in {took:.1f} s")
        by_backend = {b: spawn(b, args, model) for b in backends}

    data = {
        "device": args.device,
        "quick": args.quick,
        "dtype": args.dtype,
        "model": str(args.model) if args.model else "random",
        "model_overrides": shape,
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "batches": args.batches,
        "backends": by_backend,
        "results": [r for res in by_backend.values() for r in res.get("runs", [])],
        "ratios": ratios(by_backend, args.batches),
    }
    print_table(data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(data, indent=2))
    print(f"wrote {out / 'engine.json'}")
    return 1 if any("error" in res for res in by_backend.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
