"""The "server" object of a URL bench: what /metrics says, and nothing (never an error) from servers that are
not llmctl. The llmctl case runs end to end in tests/agent/test_measurement.py."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from llmctl.agent.server_metrics import ServerWatch
from tests.factories import serve_app

VLLM_METRICS = """# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 3.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
"""

LLMCTL_PREEMPTIONS = """# TYPE llmctl_num_preemptions counter
llmctl_num_preemptions_total{{model_name="m"}} {}
# TYPE llmctl_kv_cache_usage gauge
llmctl_kv_cache_usage{{model_name="m"}} {}
"""


def watch_once(url: str) -> dict:
    async def run() -> dict:
        async with httpx.AsyncClient() as client:
            watch = ServerWatch(client, url)
            await watch.start()
            await watch.stop()
            return watch.summary()

    return asyncio.run(run())


def test_servers_without_llmctl_metrics_report_nothing():
    app = FastAPI()
    app.get("/metrics", response_class=PlainTextResponse)(lambda: VLLM_METRICS)
    with serve_app(app) as url:
        assert watch_once(url) == {}
    with serve_app(FastAPI()) as url:  # no /metrics at all: 404
        assert watch_once(url) == {}
    assert watch_once("http://127.0.0.1:9") == {}  # nothing listening


def test_preemptions_count_only_during_the_run_and_the_peak_usage_is_the_highest_seen():
    scrapes = iter([(5, 0.1), (9, 0.75), (12, 0.5)])
    app = FastAPI()
    app.get("/metrics", response_class=PlainTextResponse)(lambda: LLMCTL_PREEMPTIONS.format(*next(scrapes, (12, 0))))

    async def run(url: str) -> dict:
        async with httpx.AsyncClient() as client:
            watch = ServerWatch(client, url)
            await watch.start()  # 5 preemptions before the run
            await watch.scrape()  # a poll during it
            await watch.stop()
            return watch.summary()

    with serve_app(app) as url:
        summary = asyncio.run(run(url))
    assert summary["num_preemptions"] == 7 and summary["peak_kv_usage"] == 0.75
    assert "kv_cache_bytes" not in summary  # not exported here: left out, not 0
