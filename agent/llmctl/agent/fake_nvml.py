"""A stand-in for the `pynvml` module on machines without NVIDIA GPUs: the only fake in the agent.

It has the same function names, signatures, return shapes and exception classes as the subset of pynvml
that agent.telemetry uses, so `NvmlTelemetry(FakeNvml(...))` runs the exact code path a GPU host runs.
The exception classes are pynvml's own (importing pynvml needs no driver; only nvmlInit loads it).
Values are whatever the test configured, deterministic, and may be changed between reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

GIB = 1 << 30

READINGS = frozenset({"utilization", "memory", "power", "power_limit", "temperature", "sm_clock", "processes"})
"""Names accepted in FakeGpu.unsupported: each makes the matching nvmlDeviceGet* raise NotSupported."""


@dataclass
class FakeGpu:
    """One simulated GPU. Mutable: change a field and the next read sees it."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    """Default: GPU-fake-<index> (filled in by FakeNvml)."""
    memory_total_bytes: int = 80 * GIB
    memory_used_bytes: int = 0
    utilization_percent: int = 0
    power_watts: float = 70.0
    power_limit_watts: float = 700.0
    temperature_c: int = 35
    sm_clock_mhz: int = 1980
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    """(pid, used GPU memory bytes or None where the driver hides it)."""
    unsupported: frozenset[str] | set[str] = frozenset()
    """Readings this GPU answers with NVMLError_NotSupported (see READINGS)."""
    name_as_bytes: bool = False
    """Return the name and uuid as bytes, as older pynvml releases do."""

    def __post_init__(self) -> None:
        unknown = set(self.unsupported) - READINGS
        if unknown:
            raise ValueError(f"unknown readings {sorted(unknown)}; choose from {sorted(READINGS)}")


@dataclass(frozen=True)
class _Handle:
    index: int


class FakeNvml:
    """Module-like object with pynvml's API over a list of FakeGpu."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, gpus: list[FakeGpu] | None = None, *, init_error: int | None = None) -> None:
        """init_error: an NVML_ERROR_* code nvmlInit raises (e.g. NVML_ERROR_DRIVER_NOT_LOADED)."""
        self.gpus = list(gpus or [])
        for i, gpu in enumerate(self.gpus):
            gpu.uuid = gpu.uuid or f"GPU-fake-{i:04d}"
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0
        self._initialized = 0  # NVML reference-counts init/shutdown

    @classmethod
    def uniform(cls, count: int, **gpu_fields: Any) -> FakeNvml:
        """`count` identical GPUs, e.g. FakeNvml.uniform(8, utilization_percent=90)."""
        return cls([FakeGpu(**gpu_fields) for _ in range(count)])

    # -- lifecycle ----------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self._initialized += 1

    def nvmlShutdown(self) -> None:
        self._check_init()
        self.shutdown_calls += 1
        self._initialized -= 1

    # -- devices --------------------------------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        gpu = self._gpu(handle)
        return gpu.name.encode() if gpu.name_as_bytes else gpu.name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        gpu = self._gpu(handle)
        return gpu.uuid.encode() if gpu.name_as_bytes else gpu.uuid

    # -- readings (shapes as pynvml returns them) ------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> SimpleNamespace:
        gpu = self._gpu(handle, "utilization")
        return SimpleNamespace(gpu=gpu.utilization_percent, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> SimpleNamespace:
        gpu = self._gpu(handle, "memory")
        used = gpu.memory_used_bytes
        return SimpleNamespace(total=gpu.memory_total_bytes, used=used, free=gpu.memory_total_bytes - used)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return round(self._gpu(handle, "power").power_watts * 1000)  # milliwatts, like NVML

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return round(self._gpu(handle, "power_limit").power_limit_watts * 1000)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu = self._gpu(handle, "temperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetClockInfo(self, handle: _Handle, type: int) -> int:  # noqa: A002 - pynvml's name
        gpu = self._gpu(handle, "sm_clock")
        if type != pynvml.NVML_CLOCK_SM:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.sm_clock_mhz

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        gpu = self._gpu(handle, "processes")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    # -- helpers ----------------------------------------------------------------------------------------
    def _check_init(self) -> None:
        if self._initialized <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: _Handle, reading: str | None = None) -> FakeGpu:
        self._check_init()
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if reading is not None and reading in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu
