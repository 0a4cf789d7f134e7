"""Speculative decoding against the same engine without it, for every proposer, at batch 1 and 16, on the
repetitive and the mixed workload: per cell, `llmctl bench --compare-speculative` twice, once with each row
first (`--baseline-first`), since a process's first engine run may be a few percent off its second; the
cell's ratio is the geometric mean of the two (the two rows of each run side by side, on one workload).

    python benchmarks/bench_speculative.py [--model smollm2-135m] [--methods ngram,draft,self-int4]
        [--draft-model smollm2-135m] [--requests-b1 4] [--output-len 128] [--json FILE]

Prints a table of output tokens/s with and without speculation (spec first / no-spec first), their ratios and
target forwards per token;
writes JSON (each cell's full bench JSON included). `draft` needs a smaller model with the target's tokenizer;
where none is at hand, the target drafts for itself (all drafts accepted, each costing a whole forward: the case
the adaptive budget must turn off).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

BATCHES = {1: ("--max-num-seqs", "1"), 16: ("--max-num-seqs", "16")}


def run_once(args, method: str, workload: str, batch: int, baseline_first: bool) -> dict:
    requests = args.requests_b1 if batch == 1 else batch
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [str(Path(sys.executable).with_name("llmctl")), "bench", "--model", args.model, "--workload", workload,
               "--requests", str(requests), *BATCHES[batch], "--input-len", args.input_len,
               "--output-len", f"{args.output_len}:{args.output_len}", "--speculative-method", method,
               "--compare-speculative", "--json", out.name]
        if method == "draft":
            cmd += ["--speculative-model", args.draft_model]
        if baseline_first:
            cmd.append("--baseline-first")
        if args.isolate:
            cmd.append("--isolate-runs")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def run_cell(args, method: str, workload: str, batch: int) -> dict:
    reports = [run_once(args, method, workload, batch, first) for first in (False, True)]
    ratios, spec_rates, plain_rates = [], [], []
    for report in reports:
        runs = {r["name"]: r for r in report["runs"]}
        spec_rates.append(runs["llmctl"]["output_tokens_per_s"])
        plain_rates.append(runs["llmctl-no-spec"]["output_tokens_per_s"])
        ratios.append(spec_rates[-1] / plain_rates[-1])
    spec = {r["name"]: r for r in reports[0]["runs"]}["llmctl"]
    return {
        "method": method, "workload": workload, "batch": batch,
        "requests": args.requests_b1 if batch == 1 else batch,
        "spec_tokens_per_s": spec_rates, "plain_tokens_per_s": plain_rates,
        "ratios": ratios, "ratio": math.sqrt(ratios[0] * ratios[1]),
        "forwards_per_token": spec.get("forwards_per_token"),
        "acceptance_rate": spec.get("spec_acceptance_rate"),
        "reports": reports,
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
    ap.add_argument("--no-isolate", dest="isolate", action="store_false",
                    help="run both rows of a cell in one bench process (the second engine of a process runs slower)")
    args = ap.parse_args()
    args.draft_model = args.draft_model or args.model
    rows = []
    print(f"{'method':<10}{'workload':<11}{'batch':>6}{'spec tok/s':>14}{'plain tok/s':>14}{'ratios':>13}"
          f"{'ratio':>7}{'fwd/tok':>8}{'accept':>7}", flush=True)
    for method in args.methods.split(","):
        for workload in args.workloads.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                row = run_cell(args, method, workload, batch)
                rows.append(row)
                accept = "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.0%}"
                spec_s = "/".join(f"{v:.0f}" for v in row["spec_tokens_per_s"])
                plain_s = "/".join(f"{v:.0f}" for v in row["plain_tokens_per_s"])
                ratios = "/".join(f"{v:.2f}" for v in row["ratios"])
                print(f"{method:<10}{workload:<11}{batch:>6}{spec_s:>14}{plain_s:>14}{ratios:>13}"
                      f"{row['ratio']:>6.2f}x{row['forwards_per_token']:>8.2f}{accept:>7}", flush=True)
    worst = min(rows, key=lambda r: r["ratio"])
    print(f"\nlowest ratio: {worst['ratio']:.2f}x ({worst['method']}, {worst['workload']}, batch {worst['batch']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "draft_model": args.draft_model,
                                               "cells": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
