"""Dense bf16 linears on CPU: torch's path (oneDNN's packed layout where oneDNN packs bf16, that is with AVX512 or
AVX-NE-CONVERT; else F.linear on the plain weight, as the engine then serves) against llmctl's blocked layout
(cpu.pack_bf16, read in place by the C++ kernel: bf16 dot products on AVX512-BF16, fp32 FMA on AVX2), over a whole
decode step's worth of SmolLM2-135M decoder linears (30 layers x qkv, o, gate_up, down: 213 MB, so every weight
comes from DRAM as in serving). The JSON's "torch_path" says which torch path ran.

    python benchmarks/bench_dense_layout.py [--m 1,4,16,32,64,128,256,2048] [--threads 2] [--layers 30] [--json FILE]

Each timing is the minimum over ROUNDS rounds that alternate the two layouts (background load only adds time).
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

SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576)]  # (K, N) of the fused decoder linears
ROUNDS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="1,4,16,32,64,128,256,2048")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=30, help="fewer layers fit the cache: a smoke run only")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not (cpu.available() and cpu.quant_linear_available()):
        raise SystemExit("llmctl's blocked bf16 linear needs the C++ kernels on a CPU with AVX512-BF16 or AVX2")
    torch.set_num_threads(args.threads)
    raw = [[torch.randn(n, k, dtype=torch.bfloat16) * 0.05 for k, n in SHAPES] for _ in range(args.layers)]
    torch_weights = [[reference.prepack_linear_weight(w) for w in layer] for layer in raw]
    torch_path = "onednn" if torch_weights[0][0].is_mkldnn else "F.linear"
    blocked = [[cpu.pack_bf16(w) for w in layer] for layer in raw]
    macs_per_row = args.layers * sum(k * n for k, n in SHAPES)
    rows = []
    print(f"torch's path here: {torch_path}")
    print(f"{'M':>6} {'torch ms':>10} {'blocked ms':>11} {'torch/blocked':>15} {'blocked GMAC/s':>15}")
    for m in (int(v) for v in args.m.split(",")):
        xs = {k: torch.randn(m, k, dtype=torch.bfloat16) for k in (576, 1536)}

        def run_torch(xs: dict = xs) -> None:
            for layer in torch_weights:
                for (k, _), w in zip(SHAPES, layer, strict=True):
                    reference.linear(xs[k], w)

        def run_blocked(xs: dict = xs) -> None:
            for layer in blocked:
                for (k, _), w in zip(SHAPES, layer, strict=True):
                    cpu.quant_linear(xs[k], w, None)

        best = {"onednn": float("inf"), "blocked": float("inf")}
        for _ in range(ROUNDS):
            for name, fn in (("onednn", run_torch), ("blocked", run_blocked)):
                fn()
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
        # "onednn_ms" keeps its name for the JSON's readers; it is torch's path (torch_path), F.linear on AVX2.
        row = {"m": m, "onednn_ms": best["onednn"] * 1e3, "blocked_ms": best["blocked"] * 1e3,
               "ratio": best["onednn"] / best["blocked"], "blocked_gmac_s": macs_per_row * m / best["blocked"] / 1e9}
        rows.append(row)
        print(f"{m:>6} {row['onednn_ms']:>10.2f} {row['blocked_ms']:>11.2f} {row['ratio']:>14.2f}x "
              f"{row['blocked_gmac_s']:>15.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "layers": args.layers, "torch_path": torch_path,
                                               "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
