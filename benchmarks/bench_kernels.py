"""Memory-bound kernels against the device's copy bandwidth: paged decode attention and the W4A16 / W8A16
GEMVs, Triton vs the torch reference. Writes <out>/kernels.json and prints a table.

    python benchmarks/bench_kernels.py [--device cuda] [--quick] [--out DIR]

On cuda times are triton.testing.do_bench medians; on cpu perf_counter medians, reference ops only
(Triton there would run under the interpreter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# Runs from a checkout without an install too (the GPU check): kernels/ holds its portion of the llmctl namespace.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))

from llmctl.kernels import quant_reference, reference  # noqa: E402
from llmctl.kernels.metadata import DecodeMetadata  # noqa: E402

GOALS = {"paged_decode": 0.60, "awq_gemv": 0.50, "w8a16_gemv": None}
# (name, q heads, kv heads, head dim)
ATTN_SHAPES = [("smollm2", 9, 3, 64), ("llama8b", 32, 8, 128)]
# (name, K, N, AWQ group)
GEMV_SHAPES = [
    ("smollm2", 576, 576, 64),
    ("smollm2", 576, 1536, 64),
    ("smollm2", 1536, 576, 64),
    ("llama8b", 4096, 4096, 128),
    ("llama8b", 4096, 14336, 128),
    ("llama8b", 14336, 4096, 128),
]
KV_DTYPES = {"bf16": torch.bfloat16, "int8": torch.int8, "fp8": torch.float8_e4m3fn}


def make_timer(device: str, quick: bool):
    """fn -> median milliseconds."""
    if device.startswith("cuda"):
        from triton.testing import do_bench

        def timer(fn) -> float:
            try:
                res = do_bench(fn, warmup=10 if quick else 25, rep=20 if quick else 50, return_mode="median")
            except TypeError:  # older Triton: no return_mode
                res = do_bench(fn, quantiles=[0.5])
            return float(res[0] if isinstance(res, list | tuple) else res)

        return timer

    def cpu_timer(fn) -> float:
        fn()
        samples = []
        for _ in range(3 if quick else 10):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)

    return cpu_timer


def copy_bandwidth(device: str, quick: bool, timer) -> dict:
    """Device-to-device copy of one buffer: bytes = 2 x size (read + write)."""
    size = (16 << 20) if quick else (1 << 30) if device.startswith("cuda") else (256 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return {"size_bytes": size, "bytes": 2 * size, "ms": ms, "gbps": 2 * size / ms / 1e6}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def attention_case(seqs: int, ctx: int, h: int, kvh: int, d: int, kv_dtype: torch.dtype, device: str):
    """(args, kwargs, bytes of KV read) for paged_attention_decode over shuffled blocks of 16 tokens."""
    bs = 16
    blocks_per_seq = -(-ctx // bs)
    num_blocks = seqs * blocks_per_seq
    shape = (num_blocks, bs, kvh, d)
    scales = {}
    if kv_dtype == torch.int8:
        k = torch.randint(-127, 128, shape, dtype=torch.int8, device=device)
        v = torch.randint(-127, 128, shape, dtype=torch.int8, device=device)
        for name in ("k_scale", "v_scale"):
            scales[name] = torch.rand(shape[:-1], device=device) * 0.02 + 1e-3
    elif kv_dtype == torch.float8_e4m3fn:
        k = torch.randn(shape, device=device).to(kv_dtype)
        v = torch.randn(shape, device=device).to(kv_dtype)
        for name in ("k_scale", "v_scale"):
            scales[name] = torch.rand(kvh, device=device) * 0.02 + 1e-3
    else:
        k = torch.randn(shape, device=device, dtype=kv_dtype)
        v = torch.randn(shape, device=device, dtype=kv_dtype)
    tables = torch.randperm(num_blocks, device=device).to(torch.int32).view(seqs, blocks_per_seq).contiguous()
    meta = DecodeMetadata(
        block_tables=tables,
        context_lens=torch.full((seqs,), ctx, dtype=torch.int32, device=device),
        block_size=bs,
        max_context_len=ctx,
    )
    q = torch.randn(seqs, h, d, device=device, dtype=torch.bfloat16)
    elem = k.element_size()
    nbytes = 2 * seqs * ctx * kvh * d * elem
    if kv_dtype == torch.int8:
        nbytes += 2 * seqs * ctx * kvh * 4  # per-(token, head) fp32 scales
    return (q, k, v, meta, 1.0 / math.sqrt(d)), scales, nbytes


def gemv_case(op: str, k: int, n: int, group: int, device: str):
    """(args, kwargs, bytes of packed weights + zeros + scales) for one M=1 row."""
    x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
    if op == "awq_gemv":
        qweight = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), dtype=torch.int32, device=device)
        qzeros = torch.randint(-(2**31), 2**31 - 1, (k // group, n // 8), dtype=torch.int32, device=device)
        scales = (torch.rand(k // group, n, device=device) * 0.02 + 0.002).to(torch.bfloat16)
        nbytes = qweight.nbytes + qzeros.nbytes + scales.nbytes
        return (x, qweight, qzeros, scales, group), {}, nbytes
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
    scales = torch.rand(n, device=device) * 0.01 + 1e-4
    return (x, w, scales), {}, w.nbytes + scales.nbytes


def ops(use_triton: bool):
    """op name -> (triton fn or None, reference fn)."""
    table = {
        "paged_decode": reference.paged_attention_decode,
        "awq_gemv": quant_reference.awq_linear,
        "w8a16_gemv": quant_reference.w8a16_linear,
    }
    if not use_triton:
        return {name: (None, ref) for name, ref in table.items()}
    from llmctl.kernels.triton.paged_attention import paged_attention_decode
    from llmctl.kernels.triton.quant_matmul import awq_linear, w8a16_linear

    fast = {"paged_decode": paged_attention_decode, "awq_gemv": awq_linear, "w8a16_gemv": w8a16_linear}
    return {name: (fast[name], ref) for name, ref in table.items()}


def cases(quick: bool, device: str):
    """Yields (op, label, builder) for every benchmark row."""
    seqs, ctx = (4, 64) if quick else (64, 1024)
    attn = ATTN_SHAPES[:1] if quick else ATTN_SHAPES
    for shape, h, kvh, d in attn:
        for dname, dt in KV_DTYPES.items():
            label = f"{shape} B={seqs} ctx={ctx} H={h} KVH={kvh} D={d} kv={dname}"
            yield "paged_decode", label, lambda h=h, kvh=kvh, d=d, dt=dt: attention_case(
                seqs, ctx, h, kvh, d, dt, device
            )
    gemv = [s for s in GEMV_SHAPES if s[0] == "smollm2"] if quick else GEMV_SHAPES
    for op in ("awq_gemv", "w8a16_gemv"):
        for shape, k, n, group in gemv:
            label = f"{shape} M=1 K={k} N={n}" + (f" g={group}" if op == "awq_gemv" else "")
            yield op, label, lambda op=op, k=k, n=n, group=group: gemv_case(op, k, n, group, device)


def measure(build, triton_fn, ref_fn, timer, copy_gbps: float, goal: float | None) -> dict:
    args, kwargs, nbytes = build()
    ref_ms = timer(lambda: ref_fn(*args, **kwargs))
    row = {"bytes": nbytes, "reference_ms": ref_ms, "reference_gbps": nbytes / ref_ms / 1e6}
    if triton_fn is None:
        return row
    err = rel_err(triton_fn(*args, **kwargs), ref_fn(*args, **kwargs))
    ms = timer(lambda: triton_fn(*args, **kwargs))
    frac = nbytes / ms / 1e6 / copy_gbps
    row.update(
        rel_err=err,
        triton_ms=ms,
        triton_gbps=nbytes / ms / 1e6,
        frac_of_copy=frac,
        meets_goal=None if goal is None else frac >= goal,
        speedup_vs_reference=ref_ms / ms,
    )
    return row


def run(device: str, quick: bool) -> dict:
    use_triton = device.startswith("cuda")
    timer = make_timer(device, quick)
    copy = copy_bandwidth(device, quick, timer)
    print(f"copy bandwidth: {copy['gbps']:.0f} GB/s ({copy['size_bytes'] >> 20} MiB buffer, read + write)")
    print(f"{'op':<13} {'case':<52} {'bytes':>12}")
    table = ops(use_triton)
    results = []
    for op, label, build in cases(quick, device):
        triton_fn, ref_fn = table[op]
        row = {"op": op, "case": label, "goal_frac_of_copy": GOALS[op]}
        try:
            row.update(measure(build, triton_fn, ref_fn, timer, copy["gbps"], GOALS[op]))
        except Exception as exc:  # one broken case must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        results.append(row)
        print_row(row)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if use_triton else "cpu",
        "quick": quick,
        "triton": use_triton,
        "triton_skipped_reason": None if use_triton else "Triton skipped on cpu (interpreter too slow)",
        "timer": "triton.testing.do_bench median" if use_triton else "time.perf_counter median",
        "copy": copy,
        "results": results,
    }


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"{row['op']:<13} {row['case']:<52} ERROR {row['error']}", flush=True)
        return
    goal = row["goal_frac_of_copy"]
    verdict = {True: "ok", False: "MISS", None: ""}[row.get("meets_goal")]
    print(
        f"{row['op']:<13} {row['case']:<52} {row['bytes'] / 1e6:>9.2f} MB"
        f"  triton {fmt(row.get('triton_ms'), '8.4f')} ms {fmt(row.get('triton_gbps'), '7.0f')} GB/s"
        f" = {fmt(row.get('frac_of_copy'), '5.1%')} of copy (goal {fmt(goal, '.0%')}) {verdict:<4}"
        f"  ref {row['reference_ms']:8.4f} ms {row['reference_gbps']:6.0f} GB/s"
        f"  x{fmt(row.get('speedup_vs_reference'), '.1f')}"
        f"  err {fmt(row.get('rel_err'), '.1e')}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few iterations")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_out")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU; use --device cpu")
    torch.manual_seed(0)
    if not args.device.startswith("cuda"):
        print("device is cpu: timing the torch reference ops only; Triton skipped (interpreter too slow)")
    data = run(args.device, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(data, indent=2))
    print(f"wrote {out / 'kernels.json'}")
    return 1 if any("error" in r for r in data["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
