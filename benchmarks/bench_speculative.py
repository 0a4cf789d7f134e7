"""Speculative decoding against the same engine without it, for every proposer, at batch 1 and 16, on the
repetitive and the mixed workload: one `llmctl bench --compare-speculative` run per cell (the two rows of a
cell run side by side in one process, on one workload).

    python benchmarks/bench_speculative.py [--model smollm2-135m] [--methods ngram,draft,self-int4]
        [--draft-model smollm2-135m] [--requests-b1 4] [--output-len 128] [--json FILE]

Prints a table of output tokens/s with and without speculation, their ratio and target forwards per token;
writes JSON (each cell's full bench JSON included). `draft` needs a smaller model with the target's tokenizer;
where none is at hand, the target drafts for itself (all drafts accepted, each costing a whole forward: the case
the adaptive budget must turn off).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BATCHES = {1: ("--max-num-seqs", "1"), 16: ("--max-num-seqs", "16")}


def run_cell(args, method: str, workload: str, batch: int) -> dict:
    requests = args.requests_b1 if batch == 1 else batch
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [str(Path(sys.executable).with_name("llmctl")), "bench", "--model", args.model, "--workload", workload,
               "--requests", str(requests), *BATCHES[batch], "--input-len", args.input_len,
               "--output-len", f"{args.output_len}:{args.output_len}", "--speculative-method", method,
               "--compare-speculative", "--json", out.name]
        if method == "draft":
            cmd += ["--speculative-model", args.draft_model]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        report = json.loads(Path(out.name).read_text())
    runs = {r["name"]: r for r in report["runs"]}
    spec, plain = runs["llmctl"], runs["llmctl-no-spec"]
    return {
        "method": method, "workload": workload, "batch": batch, "requests": requests,
        "spec_tokens_per_s": spec["output_tokens_per_s"], "plain_tokens_per_s": plain["output_tokens_per_s"],
        "ratio": spec["output_tokens_per_s"] / plain["output_tokens_per_s"],
        "forwards_per_token": spec.get("forwards_per_token"),
        "acceptance_rate": spec.get("spec_acceptance_rate"),
        "spec_tpot_ms": spec["tpot_ms"]["mean"], "plain_tpot_ms": plain["tpot_ms"]["mean"],
        "report": report,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="ngram,draft,self-int4")
    ap.add_argument("--draft-model", default=None, help="default: the target itself")
    ap.add_argument("--workloads", default="repetitive,mixed")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--requests-b1", type=int, default=4, help="requests at batch 1, served one after another")
    ap.add_argument("--input-len", default="100:300")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.draft_model = args.draft_model or args.model
    rows = []
    print(f"{'method':<10}{'workload':<12}{'batch':>6}{'spec tok/s':>12}{'plain tok/s':>13}{'ratio':>8}"
          f"{'fwd/tok':>9}{'accept':>8}", flush=True)
    for method in args.methods.split(","):
        for workload in args.workloads.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                row = run_cell(args, method, workload, batch)
                rows.append(row)
                accept = "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.0%}"
                print(f"{method:<10}{workload:<12}{batch:>6}{row['spec_tokens_per_s']:>12.1f}"
                      f"{row['plain_tokens_per_s']:>13.1f}{row['ratio']:>7.2f}x{row['forwards_per_token']:>9.2f}"
                      f"{accept:>8}", flush=True)
    worst = min(rows, key=lambda r: r["ratio"])
    print(f"\nlowest ratio: {worst['ratio']:.2f}x ({worst['method']}, {worst['workload']}, batch {worst['batch']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "draft_model": args.draft_model,
                                               "cells": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
