"""What quality sampling adds to a request's latency in the gateway: sampling 100% vs 0%, side by side.

One real gateway (build_gateway_app, a SQLite store, the real QualitySampler and QualityWorker) in front of
one real engine server (a tiny random Llama under uvicorn). Requests alternate between the two arms (the
deployment's sample rate flips between 1 and 0 before each), so drift on the machine hits both alike. The
worker stores every sampled answer; no scorer replica is ready, so each stored sample is then marked failed:
the database work of sampling happens, but no scoring competes with the replica for this box's two cores
(in production the scorer is a replica on a GPU of its own). Prints p50/p95 per arm and the differences
with 95% bootstrap intervals; writes JSON.

    .venv/bin/python benchmarks/bench_quality_sampling.py --requests 400 --json benchmarks/results/quality-sampling-latency.json
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.factories

from tests.factories import make_tiny_llama, serve_app  # noqa: E402

MESSAGES = [{"role": "user", "content": "Paged attention stores keys and values in blocks."}]


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(values, 50) * 1e3), "p95_ms": float(np.percentile(values, 95) * 1e3)}


def difference_interval(on: list[float], off: list[float], q: float) -> tuple[float, float, float]:
    """q-th percentile of `on` minus that of `off`, in ms, with a 95% bootstrap interval."""
    from scipy import stats

    def diff(a, b, axis=-1):
        return np.percentile(a, q, axis=axis) - np.percentile(b, q, axis=axis)

    result = stats.bootstrap((np.array(on), np.array(off)), diff, n_resamples=2000, random_state=0,
                             vectorized=True)
    low, high = result.confidence_interval
    return float(diff(np.array(on), np.array(off)) * 1e3), float(low * 1e3), float(high * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="In all, half per arm")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from prometheus_client import CollectorRegistry

    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app
    from llmctl.controlplane.db.session import make_engine, session_factory, session_scope, upgrade_database
    from llmctl.controlplane.gateway.app import build_gateway_app
    from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
    from llmctl.controlplane.gateway.sampling import QualitySampler, SamplingTable
    from llmctl.controlplane.quality.worker import QUEUE_SIZE, QualityWorker
    from llmctl.controlplane.services import deployments, tenants

    logging.getLogger("llmctl.controlplane.quality").setLevel(logging.ERROR)  # every sample: "no scorer"
    tmp = Path(tempfile.mkdtemp(prefix="bench-quality-sampling-"))
    url = f"sqlite:///{tmp / 'llmctl.db'}"
    upgrade_database(url)
    db = session_factory(make_engine(url), api_key_secret=secrets.token_hex(16))  # a scratch database
    with session_scope(db) as session:
        deployments.deploy(session, name="tiny", model="tiny", engine_config={})
        _, key = tenants.create_tenant(session, name="bench")
    model = make_tiny_llama(tmp / "tiny", max_position_embeddings=512)
    engine = AsyncEngine.from_config(EngineConfig(model=str(model), dtype="float32", max_model_len=512,
                                                  num_kv_blocks=256))
    table = SamplingTable()
    sampler = QualitySampler(table, queue.Queue(QUEUE_SIZE), registry=CollectorRegistry())
    worker = QualityWorker(db, sampler, registry=CollectorRegistry())
    worker.start()
    latencies: dict[str, list[float]] = {"sampled": [], "unsampled": []}
    with serve_app(build_app(engine, "tiny")) as replica:
        routes = RouteTable()
        routes.set_endpoints("tiny", [Endpoint(1, replica, "tiny", 1)])
        app = build_gateway_app(routes=routes, db_factory=db, sampler=sampler, metrics_registry=CollectorRegistry())
        with serve_app(app) as gateway, httpx.Client(base_url=gateway, timeout=60,
                                                     headers={"authorization": f"Bearer {key}"}) as client:
            body = {"model": "tiny", "messages": MESSAGES, "max_tokens": args.max_tokens, "temperature": 0}
            for _ in range(10):  # warm-up: first requests compile and allocate
                client.post("/v1/chat/completions", json=body).raise_for_status()
            for i in range(args.requests):
                arm = "sampled" if i % 2 else "unsampled"
                table.replace({"tiny": 1.0 if arm == "sampled" else 0.0})
                started = time.perf_counter()
                client.post("/v1/chat/completions", json=body).raise_for_status()
                latencies[arm].append(time.perf_counter() - started)
    worker.stop()
    sampled_total = sampler.sampled.labels("tiny")._value.get()
    dropped = sum(sampler.dropped.labels("tiny", r)._value.get() for r in ("queue_full", "scorer"))
    rows = {arm: percentiles(values) for arm, values in latencies.items()}
    p50 = difference_interval(latencies["sampled"], latencies["unsampled"], 50)
    p95 = difference_interval(latencies["sampled"], latencies["unsampled"], 95)
    print(f"{'arm':10s} {'n':>5s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for arm, values in latencies.items():
        print(f"{arm:10s} {len(values):5d} {rows[arm]['p50_ms']:8.2f} {rows[arm]['p95_ms']:8.2f}")
    print(f"sampled - unsampled: p50 {p50[0]:+.2f} ms [95% CI {p50[1]:+.2f}, {p50[2]:+.2f}], "
          f"p95 {p95[0]:+.2f} ms [{p95[1]:+.2f}, {p95[2]:+.2f}]")
    print(f"samples queued {sampled_total:g}, not scored (no scorer, or queue full) {dropped:g}")
    if args.json:
        args.json.write_text(json.dumps({
            "requests": args.requests, "max_tokens": args.max_tokens, "arms": rows,
            "difference_ms": {"p50": p50, "p95": p95}, "samples_queued": sampled_total,
            "samples_not_scored": dropped}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
