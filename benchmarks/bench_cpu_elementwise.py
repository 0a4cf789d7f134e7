"""The C++ elementwise kernels alone on one prefill step's rows (SmolLM2-135M widths), against the torch
reference: add + RMSNorm, in-place rotary on a fused qkv, SiLU-and-mul.

    python benchmarks/bench_cpu_elementwise.py [--rows 2048] [--dtype bfloat16] [--threads 2] [--json FILE]

Prints microseconds per call (best of ROUNDS rounds) and the bytes moved per second; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))

from llmctl.kernels import cpu, reference  # noqa: E402

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 576, 1536, 9, 3, 64
ROUNDS, CALLS = 7, 20


def best_us(fn) -> float:
    fn()
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(CALLS):
            fn()
        times.append((time.perf_counter() - t) / CALLS)
    return min(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu.available():
        raise SystemExit("the C++ CPU kernels are not available here")
    dtype, t = getattr(torch, args.dtype), args.rows
    x, res, w = (torch.randn(t, HIDDEN, dtype=dtype), torch.randn(t, HIDDEN, dtype=dtype),
                 torch.randn(HIDDEN, dtype=dtype))
    gate_up = torch.randn(t, 2 * INTERMEDIATE, dtype=dtype)
    qkv = torch.randn(t, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=dtype)
    q = qkv[:, : HEADS * HEAD_DIM].view(t, HEADS, HEAD_DIM)
    k = qkv[:, HEADS * HEAD_DIM: (HEADS + KV_HEADS) * HEAD_DIM].view(t, KV_HEADS, HEAD_DIM)
    cos, sin = torch.randn(t, HEAD_DIM, dtype=dtype), torch.randn(t, HEAD_DIM, dtype=dtype)
    size = dtype.itemsize
    ops = {  # name -> (ours, reference, bytes read and written)
        "rms_norm+residual": (lambda: cpu.rms_norm(x, w, 1e-5, res), lambda: reference.rms_norm(x, w, 1e-5, res),
                              4 * t * HIDDEN * size),
        "rotary (q and k)": (lambda: cpu.rotary_embedding(q, k, cos, sin),
                             lambda: reference.rotary_embedding(q, k, cos, sin),
                             2 * t * (HEADS + KV_HEADS) * HEAD_DIM * size),
        "silu_and_mul": (lambda: cpu.silu_and_mul(gate_up), lambda: reference.silu_and_mul(gate_up),
                         3 * t * INTERMEDIATE * size),
    }
    rows = []
    print(f"{t} rows, {args.dtype}, {args.threads} threads: us per call (GB/s)")
    print(f"{'op':<20} {'llmctl C++':>18} {'torch reference':>18} {'ratio':>7}")
    for name, (ours, ref, nbytes) in ops.items():
        a, b = best_us(ours), best_us(ref)
        rows.append({"op": name, "us": a, "reference_us": b, "gb_per_s": nbytes / a / 1e3, "speedup": b / a})
        print(f"{name:<20} {a:>9.0f} ({nbytes / a / 1e3:>5.1f}) {b:>9.0f} ({nbytes / b / 1e3:>5.1f}) {b / a:>6.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": t, "dtype": args.dtype, "threads": args.threads,
                                               "ops": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
