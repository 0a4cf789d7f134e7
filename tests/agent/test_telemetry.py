"""Agent telemetry: NVML readings (over the NVML-edge fake), host fallback, and replica /metrics scraping
against a real engine server."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llmctl.agent.fake_nvml import GIB, FakeGpu, FakeNvml
from llmctl.agent.replica_stats import histogram_quantile, parse_replica_metrics
from llmctl.agent.telemetry import (
    GpuProcessReading,
    HostTelemetry,
    NvmlTelemetry,
    ReplicaStatsScraper,
    ReplicaUnreachable,
    open_telemetry,
    scrape_replica_stats,
)

MODEL = "tiny"


def two_gpus() -> FakeNvml:
    return FakeNvml([
        FakeGpu(name="NVIDIA H100 80GB HBM3", memory_used_bytes=30 * GIB, utilization_percent=87, power_watts=312.5,
                power_limit_watts=700, temperature_c=61, sm_clock_mhz=1755,
                processes=[(4242, 29 * GIB), (4243, None)]),
        FakeGpu(name="NVIDIA L4", memory_total_bytes=24 * GIB, memory_used_bytes=GIB, utilization_percent=3,
                unsupported={"power", "temperature", "sm_clock"}),
    ])


def test_nvml_readings_flow_through_with_units_converted():
    telemetry = NvmlTelemetry(two_gpus())
    reading = telemetry.read()
    assert reading.source == "nvml" and abs(reading.at - time.time()) < 60
    h100, l4 = reading.gpus
    assert (h100.index, h100.name, h100.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-fake-0000")
    assert h100.utilization_percent == 87.0
    assert (h100.memory_used_bytes, h100.memory_total_bytes) == (30 * GIB, 80 * GIB)
    assert (h100.power_watts, h100.power_limit_watts) == (312.5, 700.0)  # NVML reports milliwatts
    assert (h100.temperature_c, h100.sm_clock_mhz) == (61.0, 1755.0)
    assert h100.processes == (GpuProcessReading(4242, 29 * GIB), GpuProcessReading(4243, None))
    assert (l4.memory_total_bytes, l4.utilization_percent) == (24 * GIB, 3.0)
    assert reading.host is not None and reading.host.memory_total_bytes > 0


def test_an_unsupported_reading_is_none_not_zero_and_spares_the_others():
    fake = FakeNvml([FakeGpu(unsupported={"utilization", "memory", "power_limit", "processes"})])
    (gpu,) = NvmlTelemetry(fake).read().gpus
    assert gpu.utilization_percent is None
    assert gpu.memory_used_bytes is None and gpu.memory_total_bytes is None
    assert gpu.power_limit_watts is None and gpu.processes == ()
    assert gpu.power_watts == 70.0 and gpu.temperature_c == 35.0 and gpu.sm_clock_mhz == 1980.0
    _, l4 = NvmlTelemetry(two_gpus()).read().gpus
    assert l4.power_watts is None and l4.temperature_c is None and l4.sm_clock_mhz is None


def test_a_failing_gpu_reading_is_none_and_logged_once(caplog):
    fake = FakeNvml.uniform(1)
    telemetry = NvmlTelemetry(fake)

    def lost(handle):
        raise fake.NVMLError(fake.NVML_ERROR_GPU_IS_LOST)

    fake.nvmlDeviceGetPowerUsage = lost
    with caplog.at_level(logging.WARNING, logger="llmctl.agent.telemetry"):
        readings = [telemetry.read().gpus[0] for _ in range(3)]
    assert [r.power_watts for r in readings] == [None, None, None]
    assert readings[0].temperature_c == 35.0
    assert len([r for r in caplog.records if "power" in r.getMessage()]) == 1


def test_byte_names_from_old_pynvml_are_decoded():
    telemetry = NvmlTelemetry(FakeNvml([FakeGpu(name="Tesla T4", uuid="GPU-abc", name_as_bytes=True)]))
    assert telemetry.gpu_info() == [
        {"index": 0, "name": "Tesla T4", "uuid": "GPU-abc", "memory_total_bytes": 80 * GIB}
    ]
    (gpu,) = telemetry.read().gpus
    assert (gpu.name, gpu.uuid) == ("Tesla T4", "GPU-abc")


def test_nvml_is_initialised_once_and_shut_down_on_close():
    fake = FakeNvml.uniform(4, utilization_percent=50)
    telemetry = NvmlTelemetry(fake)
    for _ in range(3):
        assert [g.utilization_percent for g in telemetry.read().gpus] == [50.0] * 4
    fake.gpus[2].utilization_percent = 99  # the next sample sees the change
    assert telemetry.read().gpus[2].utilization_percent == 99.0
    telemetry.close()
    telemetry.close()
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)


def test_open_telemetry_falls_back_to_host_when_nvml_cannot_start(caplog):
    fake = FakeNvml(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with caplog.at_level(logging.INFO, logger="llmctl.agent.telemetry"):
        telemetry = open_telemetry(fake)
    assert isinstance(telemetry, HostTelemetry)
    assert "Driver Not Loaded" in caplog.text
    reading = telemetry.read()
    assert reading.source == "host" and reading.gpus == []


def test_open_telemetry_uses_host_without_gpus_and_nvml_with_them():
    empty = FakeNvml([])
    assert isinstance(open_telemetry(empty), HostTelemetry)
    assert empty.shutdown_calls == 1  # NVML released when it is not used
    telemetry = open_telemetry(FakeNvml.uniform(2))
    assert isinstance(telemetry, NvmlTelemetry) and len(telemetry.read().gpus) == 2


def test_host_telemetry_reports_this_machines_memory_and_no_gpus():
    telemetry = HostTelemetry()
    reading = telemetry.read()
    assert telemetry.gpu_info() == [] and reading.gpus == []
    assert reading.host.memory_total_bytes == psutil.virtual_memory().total > 0
    assert 0 < reading.host.memory_used_bytes < reading.host.memory_total_bytes
    assert 0.0 <= reading.host.cpu_percent <= 100.0


def test_fake_gpu_rejects_a_reading_name_it_does_not_know():
    with pytest.raises(ValueError, match="unknown readings"):
        FakeGpu(unsupported={"powr"})


# -- replica /metrics ------------------------------------------------------------------------------------


def test_histogram_quantiles_interpolate_inside_the_bucket():
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.1 * 10 / 10)
    assert histogram_quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert histogram_quantile([(1.0, 1.0), (float("inf"), 4.0)], 0.95) == 1.0  # beyond the last bound


def test_metrics_a_replica_does_not_export_are_none():
    stats = parse_replica_metrics("# TYPE llmctl_num_requests_running gauge\nllmctl_num_requests_running 3\n")
    assert stats["running"] == 3
    assert stats["waiting"] is None and stats["ttft_p95_s"] is None and stats["requests_total"] is None


@pytest.fixture(scope="module")
def server(tiny_llama: Path):
    import uvicorn

    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_llama), dtype="float32", num_kv_blocks=64))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(build_app(engine, MODEL), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(timeout=30)
    sock.close()


def complete(url: str, max_tokens: int) -> dict:
    r = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": "The quick brown fox", "max_tokens": max_tokens, "ignore_eos": True,
    })
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_scraped_counters_match_the_requests_sent(server: str):
    before = scrape_replica_stats(server)
    usages = [complete(server, 5), complete(server, 3)]
    stats = scrape_replica_stats(server)
    assert stats["requests_total"] - (before["requests_total"] or 0) == 2
    assert stats["generation_tokens_total"] - before["generation_tokens_total"] == 8
    assert stats["prompt_tokens_total"] - before["prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    assert (stats["running"], stats["waiting"]) == (0, 0)
    assert 0.0 <= stats["kv_cache_usage"] <= 1.0
    assert 0 < stats["ttft_p50_s"] <= stats["ttft_p95_s"]
    assert stats["tpot_p50_s"] > 0
    assert stats["tokens_per_s"] is None  # a rate needs two scrapes


def test_scraper_reports_generation_rate_between_scrapes(server: str):
    scraper = ReplicaStatsScraper()
    try:
        assert scraper.scrape(server)["tokens_per_s"] is None
        complete(server, 6)
        assert scraper.scrape(server)["tokens_per_s"] > 0
    finally:
        scraper.close()


def test_a_dead_replica_raises_replica_unreachable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the scrape: nothing listens there
    with pytest.raises(ReplicaUnreachable, match=f"127.0.0.1:{port} is unreachable"):
        scrape_replica_stats(f"http://127.0.0.1:{port}", timeout=1.0)
