"""What an agent reports about its host: GPU readings through NVML, or host-only readings without it.

Plain dataclasses, no grpc/proto: the daemon converts them to TelemetrySample. A reading a GPU or driver
does not support is None (never 0), so the dashboard shows N/A instead of a made-up number.
Replica engine statistics come from each replica's Prometheus /metrics (see replica_stats.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import psutil

from llmctl.agent.replica_stats import ReplicaStatsScraper, ReplicaUnreachable, scrape_replica_stats

__all__ = [
    "GpuProcessReading", "GpuReading", "HostReading", "TelemetryReading", "NvmlTelemetry", "HostTelemetry",
    "Telemetry", "open_telemetry", "scrape_replica_stats", "ReplicaStatsScraper", "ReplicaUnreachable",
]

logger = logging.getLogger("llmctl.agent.telemetry")
T = TypeVar("T")


@dataclass(frozen=True)
class GpuProcessReading:
    pid: int
    used_memory_bytes: int | None


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment; None = this GPU or driver does not report that reading."""

    index: int
    uuid: str
    name: str
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    processes: tuple[GpuProcessReading, ...] = ()


@dataclass(frozen=True)
class HostReading:
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True)
class TelemetryReading:
    source: Literal["nvml", "host"]
    gpus: list[GpuReading] = field(default_factory=list)
    host: HostReading | None = None
    at: float = 0.0
    """Unix seconds."""


class Telemetry(Protocol):
    source: Literal["nvml", "host"]

    def gpu_info(self) -> list[dict[str, Any]]: ...

    def read(self) -> TelemetryReading: ...

    def close(self) -> None: ...


def read_host() -> HostReading:
    mem = psutil.virtual_memory()
    # total - available counts what programs hold; psutil's `used` leaves out some reclaimable memory
    # differently per kernel version, so this is the figure operators compare with `free -b`.
    return HostReading(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_bytes=int(mem.total - mem.available),
        memory_total_bytes=int(mem.total),
    )


class HostTelemetry:
    """No NVML on this node: CPU and memory of the host only; never any GPU numbers."""

    source: Literal["nvml", "host"] = "host"

    def __init__(self) -> None:
        # The first cpu_percent(None) call has nothing to compare with and returns 0.0; prime it.
        psutil.cpu_percent(interval=None)

    def gpu_info(self) -> list[dict[str, Any]]:
        return []

    def read(self) -> TelemetryReading:
        return TelemetryReading(source="host", gpus=[], host=read_host(), at=time.time())

    def close(self) -> None:
        pass


def _text(value: str | bytes) -> str:
    # pynvml returned bytes before 11.5 and str since; accept both.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlTelemetry:
    """GPU readings through NVML (`pynvml` from nvidia-ml-py, or any module-like object with its API)."""

    source: Literal["nvml", "host"] = "nvml"

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        nvml.nvmlInit()
        self._closed = False
        self._warned: set[tuple[int, str]] = set()
        try:
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            # Name, uuid and total memory never change while the driver is loaded: read them once.
            self._names = [_text(nvml.nvmlDeviceGetName(h)) for h in self._handles]
            self._uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in self._handles]
        except Exception:
            nvml.nvmlShutdown()
            raise
        psutil.cpu_percent(interval=None)

    def gpu_info(self) -> list[dict[str, Any]]:
        """Static facts for registration: index, name, uuid, memory_total_bytes (None if unsupported)."""
        info = []
        for i, handle in enumerate(self._handles):
            mem = self._reading(i, "memory", self._nvml.nvmlDeviceGetMemoryInfo, handle)
            info.append({"index": i, "name": self._names[i], "uuid": self._uuids[i],
                         "memory_total_bytes": int(mem.total) if mem is not None else None})
        return info

    def read(self) -> TelemetryReading:
        return TelemetryReading(
            source="nvml", gpus=[self._read_gpu(i, h) for i, h in enumerate(self._handles)],
            host=read_host(), at=time.time(),
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._nvml.nvmlShutdown()

    def _read_gpu(self, i: int, handle: Any) -> GpuReading:
        nvml = self._nvml
        util = self._reading(i, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = self._reading(i, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._reading(i, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = self._reading(i, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        temp = self._reading(i, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        clock = self._reading(i, "sm_clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        procs = self._reading(i, "processes", nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        return GpuReading(
            index=i,
            uuid=self._uuids[i],
            name=self._names[i],
            utilization_percent=float(util.gpu) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_watts=limit_mw / 1000.0 if limit_mw is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            sm_clock_mhz=float(clock) if clock is not None else None,
            processes=tuple(
                GpuProcessReading(
                    pid=int(p.pid),
                    used_memory_bytes=int(p.usedGpuMemory) if p.usedGpuMemory is not None else None,
                )
                for p in procs
            ),
        )

    def _reading(self, gpu: int, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """One NVML call; an NVMLError (usually NotSupported) blanks this reading only."""
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            if not isinstance(exc, self._nvml.NVMLError_NotSupported) and (gpu, what) not in self._warned:
                # Anything but NotSupported may be a sick GPU: say so once, not on every sample.
                self._warned.add((gpu, what))
                logger.warning("NVML %s reading of GPU %d failed: %s", what, gpu, exc)
            return None


def open_telemetry(nvml: Any = None) -> NvmlTelemetry | HostTelemetry:
    """NVML telemetry when NVML initialises and sees at least one GPU, else host-only telemetry."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as exc:
            logger.info("pynvml is not installed (%s): reporting host telemetry only", exc)
            return HostTelemetry()
    try:
        telemetry = NvmlTelemetry(nvml)
    except nvml.NVMLError as exc:
        logger.info("NVML is unavailable (%s): reporting host telemetry only, no GPU readings", exc)
        return HostTelemetry()
    if not telemetry.gpu_info():
        telemetry.close()
        logger.info("NVML sees no GPU: reporting host telemetry only")
        return HostTelemetry()
    return telemetry
