"""Weight-only quantized linears on CPU (int8, awq) against the dense oneDNN path, SmolLM2-135M shapes.

    python benchmarks/bench_quant_linear.py [--m 1,4,32,256,2048] [--dtype bfloat16] [--threads 2] [--hot]
                                            [--json FILE]

For each layer shape and row count M: microseconds per call of the prepacked dense linear, of int8 and awq
as the engine runs them (bf16 on AVX512-BF16 or AVX2: llmctl's C++ kernel; elsewhere quant_cpu picks torch's path by
M), and of each format on torch's paths with the path forced (`kernel`: torch's weight-only kernel; `tiled`:
dequantize a tile, dense GEMM), so the SMALL_M crossover in quant_cpu can be read off the table (bf16 only:
for other dtypes quant_cpu always tiles). Ratios are dense
time / quantized time: above 1 is faster than the unquantized model in the same dtype.

Cold by default: every call takes the next of enough weight copies to pass COLD_BYTES, so each weight comes
from DRAM as in decode, where 30 layers of weights stream through per token; --hot reuses one copy.
Each timing is the best of ROUNDS rounds that interleave the variants: on a shared machine background load
only ever adds time, so the minimum is the most repeatable estimate of the uncontended cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))

from llmctl.kernels import quant_cpu, quant_reference, reference  # noqa: E402

# (name, K, N): SmolLM2-135M's fused decoder linears; AWQ group 64 (what --group-size auto picks for 576).
SHAPES = [("qkv", 576, 960), ("o", 576, 576), ("gate_up", 576, 3072), ("down", 1536, 576)]
GROUP = 64
COLD_BYTES = 96 << 20  # 3x this CPU's 32 MiB L3
ROUND_SECONDS = 0.04
ROUNDS = 7
VARIANTS = ("dense", "int8", "awq", "int8_kernel", "int8_tiled", "awq_kernel", "awq_tiled")
FORMATS = ("dense", "int8", "awq", "int8_torch", "awq_torch")


class forced_path:
    """Within the block, quant_cpu takes the given path for every M ("kernel" or "tiled")."""

    def __init__(self, path: str | None):
        self.path = path

    def __enter__(self):
        self.saved = quant_cpu.SMALL_M_INT8, quant_cpu.SMALL_M_AWQ
        if self.path is not None:
            small = 1 << 30 if self.path == "kernel" else 0
            quant_cpu.SMALL_M_INT8 = quant_cpu.SMALL_M_AWQ = small

    def __exit__(self, *exc):
        quant_cpu.SMALL_M_INT8, quant_cpu.SMALL_M_AWQ = self.saved


def weights(k: int, n: int, copies: dict[str, int], dtype: torch.dtype) -> dict[str, list]:
    """Per format, `copies[format]` independent runtime weights of one [N, K] layer (`*_torch`: prepacked
    for torch's kernels, as on a CPU without AVX512-BF16)."""
    out = {f: [] for f in FORMATS}
    for _ in range(copies["dense"]):
        out["dense"].append(reference.prepack_linear_weight(torch.randn(n, k, dtype=dtype) * 0.02))
    q = torch.randint(0, 16, (k, n))
    z = torch.randint(0, 16, (k // GROUP, n))
    qweight, qzeros = quant_reference.pack_awq(q, z)
    scales = (torch.rand(k // GROUP, n) * 0.02 + 0.002).half()
    for suffix, own_kernel in (("", True), ("_torch", False)):
        quant_cpu.CPU_KERNEL = own_kernel
        try:
            for _ in range(copies["int8"]):
                w8, s = quant_reference.quantize_int8_per_channel(torch.randn(n, k))
                out["int8" + suffix].append(quant_cpu.prepack_w8a16(w8, s, dtype))
            for _ in range(copies["awq"]):
                out["awq" + suffix].append(quant_cpu.prepack_awq(qweight, qzeros, scales, GROUP, dtype))
        finally:
            quant_cpu.CPU_KERNEL = True
    return out


def copies_for(k: int, n: int, hot: bool, dtype: torch.dtype) -> dict[str, int]:
    per_copy = {"dense": dtype.itemsize * k * n, "int8": k * n, "awq": k * n // 2}
    per_copy |= {"int8_torch": per_copy["int8"], "awq_torch": per_copy["awq"]}
    return {f: 1 if hot else -(-COLD_BYTES // b) for f, b in per_copy.items()}


def callables(x: torch.Tensor, ws: dict[str, list]) -> dict[str, tuple[object, list]]:
    """variant -> (fn(weight), weights to cycle through)."""
    def dense(w):
        return reference.linear(x, w)

    def int8(w):
        return quant_cpu.w8a16_linear(x, *w)

    def awq(w):
        return quant_cpu.awq_linear(x, w[0], w[1], GROUP)

    return {
        "dense": (dense, ws["dense"]), "int8": (int8, ws["int8"]), "awq": (awq, ws["awq"]),
        "int8_kernel": (int8, ws["int8_torch"]), "int8_tiled": (int8, ws["int8_torch"]),
        "awq_kernel": (awq, ws["awq_torch"]), "awq_tiled": (awq, ws["awq_torch"]),
    }


def measure(fns: dict[str, tuple[object, list]]) -> dict[str, float]:
    """variant -> best-of-ROUNDS microseconds per call, the rounds interleaving the variants."""
    cursor = dict.fromkeys(fns, 0)
    calls, samples = {}, {v: [] for v in fns}

    def run(variant: str, n: int) -> float:
        fn, ws = fns[variant]
        with forced_path(variant.rpartition("_")[2] if variant.endswith(("_kernel", "_tiled")) else None):
            t = time.perf_counter()
            for _ in range(n):
                fn(ws[cursor[variant] % len(ws)])
                cursor[variant] += 1
            return (time.perf_counter() - t) / n

    for variant in fns:  # warm up, and size each variant's round to about ROUND_SECONDS
        run(variant, 1)
        calls[variant] = max(1, min(200, int(ROUND_SECONDS / max(run(variant, 2), 1e-7))))
    for _ in range(ROUNDS):
        for variant in fns:
            samples[variant].append(run(variant, calls[variant]))
    return {v: min(s) * 1e6 for v, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", default="1,4,32,256,2048", help="comma-separated row counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"),
                        help="activation dtype; the dense column is this dtype's prepacked linear")
    parser.add_argument("--hot", action="store_true", help="one weight copy per format (cache-resident)")
    parser.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ms = [int(m) for m in args.m.split(",")]
    shapes = [s for s in SHAPES if s[0] in args.shapes.split(",")]

    rows = []
    header = f"{'shape':<8} {'K->N':>10} {'M':>5} " + " ".join(f"{v:>11}" for v in VARIANTS)
    dtype = getattr(torch, args.dtype)
    print(f"us per call ({args.dtype}, {'hot' if args.hot else 'cold'}, {args.threads} threads); "
          "(x) = dense time / this time")
    print(header)
    for name, k, n in shapes:
        ws = weights(k, n, copies_for(k, n, args.hot, dtype), dtype)
        for m in ms:
            x = torch.randn(m, k, dtype=dtype)
            us = measure(callables(x, ws))
            ratio = {v: us["dense"] / t for v, t in us.items()}
            rows.append({"shape": name, "k": k, "n": n, "m": m, "us": us, "ratio_vs_dense": ratio})
            cells = [f"{us['dense']:>11.1f}"] + [f"{us[v]:>7.0f}({ratio[v]:.2f})" for v in VARIANTS[1:]]
            print(f"{name:<8} {f'{k}->{n}':>10} {m:>5} " + " ".join(cells), flush=True)
        del ws
    # A whole decoder layer's linears (one call of each shape) per M: what a decode step pays 30 times.
    print("\nper decoder layer (sum of the shapes above), dense time / quantized time:")
    layer = {}
    for m in ms:
        total = {v: sum(r["us"][v] for r in rows if r["m"] == m) for v in VARIANTS}
        layer[m] = {"us": total, "ratio_vs_dense": {v: total["dense"] / t for v, t in total.items()}}
        print(f"  M={m:<5} dense {total['dense']:>9.0f} us   int8 {total['dense'] / total['int8']:.2f}x"
              f"   awq {total['dense'] / total['awq']:.2f}x")
    if args.json:
        result = {
            "device": "cpu",
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": args.threads,
            "dtype": args.dtype,
            "cold": not args.hot,
            "small_m": {"int8": quant_cpu.SMALL_M_INT8, "awq": quant_cpu.SMALL_M_AWQ},
            "tile_bytes": quant_cpu.TILE_BYTES,
            "awq_group": GROUP,
            "rows": rows,
            "per_layer": layer,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
