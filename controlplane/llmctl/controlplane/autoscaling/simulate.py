"""Replay a day of traffic through the autoscaling policy (policy.py, the very code the job runs) and through
fixed provisioning at peak: replica-hours against queue waits. Pure: no I/O except reading a trace file.

The model, in discrete steps (1 s by default):
  - arrivals join one shared FIFO queue (the gateway's); every step each READY replica takes from its front up
    to max_concurrency requests in flight, round robin across replicas, and holds each for service_s;
  - a replica asked for becomes READY cold_start_s later; a stopped replica stops at once and its requests in
    flight go back to the front of the queue, in arrival order (nothing is lost; their wait goes on counting);
  - every evaluate_every_s the policy sees each READY replica's share of the queue as `waiting`, its requests
    in flight as `running`, running / max_concurrency as `kv_usage`, and a reading 1 s old; starting replicas
    are not READY. With no READY replica the queue is what the gateway holds. Scaling down stops replicas
    that are still starting first, then the newest READY ones.
  - queue wait is counted in whole steps: a request taken in the step it arrives waited 0 s.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmctl.controlplane.autoscaling.policy import AutoscalePolicy, Autoscaler, ReplicaReading, Signals

DAY_S = 86_400
MAX_TRACE_S = 31 * DAY_S


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and, where it can, the line."""


class SimulationError(ValueError):
    """A replica model or simulation setting that cannot work; the message says which value."""


@dataclass(frozen=True)
class Trace:
    """Request arrivals per second: counts[i] requests arrive during second i of the trace."""

    counts: np.ndarray  # [duration_s] int64
    name: str

    @property
    def duration_s(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def arrival_times(self) -> np.ndarray:
        """One timestamp per request (the start of its second), as load_trace reads them back."""
        return np.repeat(np.arange(self.duration_s, dtype=np.float64), self.counts)

    def peak_rate(self, window_s: int = 60) -> float:
        """The highest arrival rate (req/s) over any window_s consecutive seconds."""
        if self.duration_s <= window_s:
            return self.total / max(1, self.duration_s)
        sums = np.convolve(self.counts, np.ones(window_s, dtype=np.int64), mode="valid")
        return float(sums.max()) / window_s


@dataclass(frozen=True, order=True)
class Burst:
    start_s: float
    duration_s: float
    factor: float


def diurnal_curve(peak_rps: float, trough: float = 0.12, duration_s: int = DAY_S,
                  trough_at_h: float = 4.5) -> np.ndarray:
    """The smooth expected rate (req/s) per second: a cosine day from trough * peak_rps at trough_at_h
    o'clock to peak_rps twelve hours later."""
    t = np.arange(duration_s, dtype=np.float64)
    phase = 2 * np.pi * (t / DAY_S - trough_at_h / 24)
    return peak_rps * (trough + (1 - trough) * (1 - np.cos(phase)) / 2)


def diurnal_trace(seed: int = 0, peak_rps: float = 8.0, *, trough: float = 0.12, duration_s: int = DAY_S,
                  bursts: tuple[int, int] = (5, 10), burst_s: tuple[float, float] = (120, 600),
                  burst_factor: tuple[float, float] = (1.5, 2.5)) -> Trace:
    """A day of Poisson arrivals: the diurnal curve, times a few bursts (how many, how long and how strong
    drawn uniformly from the given ranges, at uniform random times)."""
    if not peak_rps > 0 or not 0 <= trough <= 1 or duration_s < 1:
        raise SimulationError(f"need peak_rps > 0, 0 <= trough <= 1 and a duration >= 1 s, got {peak_rps}, "
                              f"{trough}, {duration_s}")
    rng = np.random.default_rng(seed)
    curve = diurnal_curve(peak_rps, trough, duration_s)
    rate = curve.copy()
    for b in draw_bursts(rng, duration_s, bursts, burst_s, burst_factor):
        lo, hi = int(b.start_s), int(min(duration_s, b.start_s + b.duration_s))
        rate[lo:hi] = np.maximum(rate[lo:hi], curve[lo:hi] * b.factor)  # overlapping bursts: the stronger
    return Trace(rng.poisson(rate).astype(np.int64), f"diurnal (seed {seed}, peak {peak_rps:g} req/s)")


def draw_bursts(rng: np.random.Generator, duration_s: int, count: tuple[int, int],
                length_s: tuple[float, float], factor: tuple[float, float]) -> list[Burst]:
    n = int(rng.integers(count[0], count[1] + 1))
    starts = rng.uniform(0, duration_s, n)
    lengths = rng.uniform(*length_s, n)
    factors = rng.uniform(*factor, n)
    return sorted(Burst(*map(float, b)) for b in zip(starts, lengths, factors, strict=True))


def load_trace(path: str | Path) -> Trace:
    """A recorded trace: a JSON list of arrival timestamps in seconds, or a CSV file with one per line (the
    first column; a header line is skipped), in any order. Seconds count from the trace's start, unless the
    first arrival is later than a day (epoch seconds): then from that arrival's whole second. The trace ends
    with its last arrival."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"cannot read trace {path}: {e}") from e
    times = _json_times(path, text) if text.lstrip()[:1] in ("[", "{") else _csv_times(path, text)
    if not times.size:
        raise TraceError(f"trace {path} holds no arrivals")
    bad = ~np.isfinite(times) | (times < 0)
    if bad.any():
        first = int(np.argmax(bad))
        raise TraceError(f"trace {path}: arrival #{first + 1} is {float(times[first])!r}; timestamps must be "
                         "finite seconds >= 0")
    start = math.floor(times.min()) if times.min() > DAY_S else 0
    seconds = np.floor(times - start).astype(np.int64)
    if seconds.max() >= MAX_TRACE_S:
        raise TraceError(f"trace {path} spans {seconds.max() / DAY_S:.0f} days; at most 31 are simulated")
    return Trace(np.bincount(seconds).astype(np.int64), path.name)


def _json_times(path: Path, text: str) -> np.ndarray:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"trace {path} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not all(type(x) in (int, float) for x in data):  # bool is not a time
        raise TraceError(f"trace {path}: expected a JSON list of arrival timestamps in seconds, like "
                         "[0.5, 1.2]")
    return np.asarray(data, dtype=np.float64)


def _csv_times(path: Path, text: str) -> np.ndarray:
    times = []
    for number, line in enumerate(text.splitlines(), 1):
        cell = line.split(",", 1)[0].strip()
        if not cell:
            continue
        try:
            times.append(float(cell))
        except ValueError:
            if number == 1:  # a header
                continue
            raise TraceError(f"trace {path}, line {number}: {cell!r} is not an arrival timestamp in seconds; "
                             "expected one number per line (CSV) or a JSON list") from None
    return np.asarray(times, dtype=np.float64)


@dataclass(frozen=True)
class ReplicaModel:
    """What one replica does: READY cold_start_s after it is asked for, then max_concurrency requests at once,
    each for service_s."""

    cold_start_s: float = 120.0
    max_concurrency: int = 8
    service_s: float = 3.0

    def __post_init__(self) -> None:
        if self.cold_start_s < 0 or self.max_concurrency < 1 or not self.service_s > 0:
            raise SimulationError(f"need cold start >= 0 s, concurrency >= 1 and service time > 0 s, got "
                                  f"{self.cold_start_s}, {self.max_concurrency}, {self.service_s}")

    @property
    def throughput_rps(self) -> float:
        return self.max_concurrency / self.service_s


@dataclass(frozen=True)
class SimConfig:
    step_s: float = 1.0
    evaluate_every_s: float = 2.0
    """As the control plane's autoscaler job (runner.AUTOSCALE_EVERY_S)."""
    slo_queue_wait_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.step_s > 0 or self.evaluate_every_s < self.step_s or self.slo_queue_wait_s < 0:
            raise SimulationError(f"need step > 0, evaluate every >= step and SLO >= 0, got {self.step_s}, "
                                  f"{self.evaluate_every_s}, {self.slo_queue_wait_s}")


@dataclass(frozen=True)
class ScaleEvent:
    at_s: float
    current: int
    desired: int
    reason: str


@dataclass(frozen=True)
class RunResult:
    """One provisioning over one trace."""

    name: str
    initial_replicas: int
    replica_hours: float
    """Replica-seconds over the trace, starting replicas included (a GPU is paid from the ask), / 3600."""
    arrived: int
    served: int
    queued_at_end: int
    in_flight_at_end: int
    wait_p50_s: float
    wait_p99_s: float
    slo_misses: float
    """Fraction of arrived requests that waited longer than the SLO (those queued at the end included)."""
    max_replicas: int
    scale_events: int
    events: tuple[ScaleEvent, ...]
    minutes: dict[str, np.ndarray] = field(repr=False)
    """Per minute: arrival_rps, ready (mean replicas READY), asked (mean replicas asked for)."""


@dataclass(frozen=True)
class Comparison:
    trace: str
    fixed_replicas: int
    peak_rate_rps: float
    autoscaled: RunResult
    fixed: RunResult

    @property
    def saving(self) -> float:
        """Replica-hours the autoscaler saves, as a fraction of fixed provisioning's."""
        return 1 - self.autoscaled.replica_hours / self.fixed.replica_hours


def fixed_replicas_for(trace: Trace, model: ReplicaModel) -> int:
    """Fixed provisioning at peak: the fewest replicas whose throughput covers the busiest minute's rate."""
    return max(1, math.ceil(trace.peak_rate(60) / model.throughput_rps - 1e-9))


def compare(trace: Trace, policy: AutoscalePolicy, model: ReplicaModel,
            config: SimConfig = SimConfig()) -> Comparison:
    """The same trace autoscaled by `policy` and on fixed_replicas_for it."""
    n = fixed_replicas_for(trace, model)
    return Comparison(trace.name, n, trace.peak_rate(60), simulate(trace, model, config, policy=policy),
                      simulate(trace, model, config, fixed=n))


def warm_start(trace: Trace, model: ReplicaModel, policy: AutoscalePolicy) -> int:
    """The replicas READY when the trace starts (a day follows a day): as many as carry the first minute's
    rate at the policy's KV-usage target, within [min, max]."""
    first = trace.counts[:60].sum() / min(60, max(1, trace.duration_s))
    n = math.ceil(first / (model.throughput_rps * (policy.target_kv_usage or 1.0)) - 1e-9)
    return max(policy.min_replicas, min(policy.max_replicas, n))


class _Replica:
    __slots__ = ("ident", "ready_at", "inflight", "running")

    def __init__(self, ident: int, ready_at: int) -> None:
        self.ident, self.ready_at, self.running = ident, ready_at, 0
        self.inflight: deque[list[int]] = deque()
        """[end step, arrival step, count], oldest first."""


def simulate(trace: Trace, model: ReplicaModel, config: SimConfig = SimConfig(), *,
             policy: AutoscalePolicy | None = None, fixed: int | None = None) -> RunResult:
    """Run the trace through the autoscaler with `policy` (starting READY at warm_start), or through `fixed`
    replicas READY all along."""
    if (policy is None) == (fixed is None) or fixed is not None and fixed < 1:
        raise SimulationError(f"simulate either a policy or a fixed count of 1 or more replicas, got {fixed}")
    step = config.step_s
    arrivals = _per_step(trace.counts, step)
    n_steps = len(arrivals)
    cold = math.ceil(model.cold_start_s / step - 1e-9)
    service = max(1, round(model.service_s / step))
    every = max(1, round(config.evaluate_every_s / step))
    conc = model.max_concurrency
    scaler = Autoscaler(policy) if policy is not None else None

    initial = fixed if fixed is not None else warm_start(trace, model, policy)
    replicas = [_Replica(i, 0) for i in range(initial)]
    next_id = len(replicas)
    queue: deque[list[int]] = deque()  # [arrival step, count], oldest first
    queued = served = 0
    waits = [0] * (n_steps + 1)  # requests by steps waited
    ready_series = np.zeros(n_steps, dtype=np.int32)
    asked_series = np.zeros(n_steps, dtype=np.int32)
    events: list[ScaleEvent] = []
    rr = 0
    arrivals_list = arrivals.tolist()
    for t in range(n_steps):
        a = arrivals_list[t]
        if a:
            queue.append([t, a])
            queued += a
        ready = []
        for r in replicas:
            if r.ready_at > t:
                continue
            ready.append(r)
            inflight = r.inflight
            while inflight and inflight[0][0] <= t:
                done = inflight.popleft()[2]
                r.running -= done
                served += done
        if queued and ready:
            queued, rr = _dispatch(queue, queued, ready, conc, t, t + service, waits, rr)
        if scaler is not None and t % every == 0:
            decision = scaler.decide(len(replicas), _signals(replicas, ready, queued, conc, t), t * step)
            if decision.changes:
                events.append(ScaleEvent(t * step, decision.current, decision.desired, decision.reason))
                if decision.desired > len(replicas):
                    for _ in range(decision.desired - len(replicas)):
                        replicas.append(_Replica(next_id, t + cold))
                        next_id += 1
                else:
                    queued += _stop(replicas, len(replicas) - decision.desired, queue, t, service, waits)
                    ready = [r for r in replicas if r.ready_at <= t]
        ready_series[t] = len(ready)
        asked_series[t] = len(replicas)

    in_flight = sum(r.running for r in replicas)
    for arrived_at, count in queue:  # still waiting at the end: their wait so far counts
        waits[n_steps - arrived_at] += count
    assert served + queued + in_flight == int(arrivals.sum()), "the simulator lost requests"
    return RunResult(
        name="autoscaled" if policy is not None else f"fixed {fixed}", initial_replicas=initial,
        replica_hours=float(asked_series.sum()) * step / 3600,
        arrived=int(arrivals.sum()), served=served, queued_at_end=queued, in_flight_at_end=in_flight,
        **_wait_stats(np.asarray(waits, dtype=np.int64), step, config.slo_queue_wait_s),
        max_replicas=int(asked_series.max()) if n_steps else 0,
        scale_events=len(events), events=tuple(events),
        minutes=_per_minute(trace.counts, ready_series, asked_series, step),
    )


def _per_step(counts: np.ndarray, step: float) -> np.ndarray:
    if step == 1:
        return counts
    index = np.floor(np.arange(len(counts)) / step).astype(np.int64)
    return np.bincount(index, weights=counts).astype(np.int64)


def _dispatch(queue: deque[list[int]], queued: int, ready: list[_Replica], conc: int, t: int, end: int,
              waits: list[int], rr: int) -> tuple[int, int]:
    """Ready replicas take from the queue's front, one request each in turn while they have room."""
    n = len(ready)
    room = [conc - r.running for r in ready]
    take = min(queued, sum(room))
    shares = [0] * n
    left = take
    while left:
        for k in range(n):
            i = (rr + k) % n
            if room[i] > shares[i]:
                shares[i] += 1
                left -= 1
                if not left:
                    rr = (i + 1) % n
                    break
    for r, share in zip(ready, shares, strict=True):
        while share:
            head = queue[0]
            got = min(share, head[1])
            r.inflight.append([end, head[0], got])
            r.running += got
            waits[t - head[0]] += got
            share -= got
            head[1] -= got
            if not head[1]:
                queue.popleft()
    return queued - take, rr


def _signals(replicas: list[_Replica], ready: list[_Replica], queued: int, conc: int, t: int) -> Signals:
    share = queued / len(ready) if ready else 0.0
    readings = tuple(
        ReplicaReading(r.ident, True, share, float(r.running), r.running / conc, 1.0) if r.ready_at <= t
        else ReplicaReading(r.ident, False)
        for r in replicas
    )
    return Signals(readings, gateway_queue=None if ready else float(queued))


def _stop(replicas: list[_Replica], n: int, queue: deque[list[int]], t: int, service: int,
          waits: list[int]) -> int:
    """Stop n replicas, starting ones first, then the newest; their requests in flight go back to the front of
    the queue (they arrived before anything queued: the queue is FIFO). Returns how many went back."""
    order = sorted(replicas, key=lambda r: (r.ready_at <= t, -r.ident))[:n]
    back: list[list[int]] = []
    for r in order:
        replicas.remove(r)
        for end, arrived_at, count in r.inflight:
            waits[end - service - arrived_at] -= count  # counted again when a replica takes it anew
            back.append([arrived_at, count])
    back.sort()
    queue.extendleft(reversed(back))
    return sum(count for _, count in back)


def _wait_stats(waits: np.ndarray, step: float, slo_s: float) -> dict[str, float]:
    total = int(waits.sum())
    if not total:
        return {"wait_p50_s": 0.0, "wait_p99_s": 0.0, "slo_misses": 0.0}
    cum = np.cumsum(waits)
    seconds = np.arange(len(waits)) * step

    def quantile(q: float) -> float:
        return float(seconds[int(np.searchsorted(cum, q * total - 1e-9))])

    return {"wait_p50_s": quantile(0.5), "wait_p99_s": quantile(0.99),
            "slo_misses": float(waits[seconds > slo_s + 1e-9].sum()) / total}


def _per_minute(counts: np.ndarray, ready: np.ndarray, asked: np.ndarray,
                step: float) -> dict[str, np.ndarray]:
    minutes = math.ceil(len(counts) / 60)

    def mean_per_minute(series: np.ndarray, seconds_per_item: float) -> np.ndarray:
        minute = np.floor(np.arange(len(series)) * seconds_per_item / 60).astype(np.int64)
        sums = np.bincount(minute, weights=series, minlength=minutes)[:minutes]
        items = np.bincount(minute, minlength=minutes)[:minutes]
        return sums / np.maximum(items, 1)

    return {"arrival_rps": np.bincount(np.arange(len(counts)) // 60, weights=counts, minlength=minutes) / 60,
            "ready": mean_per_minute(ready, step), "asked": mean_per_minute(asked, step)}
