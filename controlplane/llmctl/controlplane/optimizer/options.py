"""What an optimization run is asked to do, validated once at the edge (the CLI and StartOptimization)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llmctl.controlplane.errors import InvalidArgument

GOALS = ("throughput", "latency", "memory", "cost")

DEFAULT_WORKLOAD: dict[str, Any] = {
    "requests": 24, "input_len": [32, 128], "output_len": [32, 96], "shared_prefix_len": 0,
    "request_rate": "inf", "seed": 0,
}
"""A short, saturating workload: every request arrives at once, so the engine's batching and KV pool decide."""

MAX_LENGTHS = 10_000
WORKLOAD_KEYS = frozenset({*DEFAULT_WORKLOAD, "lengths"})
"""DEFAULT_WORKLOAD's keys, and the optional "lengths": explicit [input_tokens, output_tokens] per request
(cycled over the requests; input excludes the shared prefix), as a workload from recorded traffic has."""


def _check_lengths(raw: object) -> list[list[int]]:
    def positive(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not (isinstance(raw, list | tuple) and 1 <= len(raw) <= MAX_LENGTHS
            and all(isinstance(p, list | tuple) and len(p) == 2 and positive(p[0]) and positive(p[1]) for p in raw)):
        shown = raw if not isinstance(raw, list | tuple) or len(raw) <= 4 else [*raw[:3], "..."]
        raise InvalidArgument(f"workload lengths must be 1 to {MAX_LENGTHS} pairs [input_tokens, output_tokens] of "
                              f"integers >= 1, got {shown!r}")
    return [[p[0], p[1]] for p in raw]


def check_workload(raw: object) -> dict[str, Any]:
    """A bench workload spec (the keys of DEFAULT_WORKLOAD; missing ones take its values). With "lengths",
    input_len and output_len become the lengths' smallest and largest, so every reader of the ranges stays
    right."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"a workload must be a JSON object with keys {sorted(WORKLOAD_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - WORKLOAD_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown workload key(s) {unknown}; known: {sorted(WORKLOAD_KEYS)}")
    spec = {**DEFAULT_WORKLOAD, **raw}
    if "lengths" in spec:
        lengths = spec["lengths"] = _check_lengths(spec["lengths"])
        spec["input_len"] = [min(p[0] for p in lengths), max(p[0] for p in lengths)]
        spec["output_len"] = [min(p[1] for p in lengths), max(p[1] for p in lengths)]
    requests = spec["requests"]
    if isinstance(requests, bool) or not isinstance(requests, int) or not 1 <= requests <= 10_000:
        raise InvalidArgument(f"workload requests must be an integer in 1..10000, got {requests!r}")
    for key in ("input_len", "output_len"):
        bounds = spec[key]
        if isinstance(bounds, int) and not isinstance(bounds, bool):
            bounds = [bounds, bounds]
        if not (isinstance(bounds, list | tuple) and len(bounds) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in bounds)
                and 1 <= bounds[0] <= bounds[1]):
            raise InvalidArgument(f"workload {key} must be [low, high] with 1 <= low <= high, got {spec[key]!r}")
        spec[key] = list(bounds)
    prefix = spec["shared_prefix_len"]
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise InvalidArgument(f"workload shared_prefix_len must be an integer >= 0, got {prefix!r}")
    rate = spec["request_rate"]
    if rate != "inf" and (isinstance(rate, bool) or not isinstance(rate, int | float)
                          or not math.isfinite(rate) or rate <= 0):
        raise InvalidArgument(f"workload request_rate must be a positive number or \"inf\", got {rate!r}")
    seed = spec["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"workload seed must be an integer, got {seed!r}")
    return spec


@dataclass(frozen=True)
class OptimizeOptions:
    """`llmctl optimize` flags. Fractions are 0..1 (0.02 = 2%)."""

    goal: str = "throughput"
    max_quality_drop: float = 0.02
    """Largest tolerated drop on every quality metric against the deployment's quality reference."""
    min_gain: float = 0.05
    """A gain counts only when the lower bound of its 95% interval exceeds this."""
    slo_ttft_p95_ms: float | None = None
    slo_tpot_p95_ms: float | None = None
    techniques: tuple[str, ...] | None = None
    """None: every technique that addresses the bottleneck, in order of effort."""
    advisory: bool = False
    """Measure and recommend; create no revision."""
    budget_minutes: float = 60.0
    """No new technique is started after this long; the run then finishes with what it kept."""
    repeats: int = 3
    """Candidate measurements per step (the current best is measured once more, before, between and after)."""
    workload: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_WORKLOAD))
    eval_max_tokens: int = 2048
    """Corpus tokens each quality eval scores."""
    eval_mc_limit: int = 60
    """Multiple-choice items each quality eval scores."""
    from_traffic: bool = False
    """Measure with a workload made from the deployment's recorded traffic (replaces `workload` when the run
    starts; the run stores the workload it made)."""
    traffic_window_minutes: float = 60.0
    """With from_traffic: how far back the recorded traffic is read."""

    def __post_init__(self) -> None:
        if self.goal not in GOALS:
            raise InvalidArgument(f"goal must be one of {', '.join(GOALS)}, got {self.goal!r}")
        for name, low, high in (("max_quality_drop", 0.0, 1.0), ("min_gain", 0.0, 10.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise InvalidArgument(f"{name} must be a fraction in [{low:g}, {high:g}], got {value!r}")
        for name in ("slo_ttft_p95_ms", "slo_tpot_p95_ms"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value <= 0):
                raise InvalidArgument(f"{name} must be a positive number of milliseconds, got {value!r}")
        if self.techniques is not None:
            if not isinstance(self.techniques, tuple) or not self.techniques \
                    or not all(isinstance(t, str) and t for t in self.techniques):
                raise InvalidArgument(f"techniques must be a non-empty list of names, got {self.techniques!r}")
        budget = self.budget_minutes
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 7 * 24 * 60:
            raise InvalidArgument(f"budget_minutes must be a positive number of minutes, got {budget!r}")
        for name, low, high in (("repeats", 2, 20), ("eval_max_tokens", 64, 1_000_000),
                                ("eval_mc_limit", 0, 100_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgument(f"{name} must be an integer in {low}..{high}, got {value!r}")
        if not isinstance(self.from_traffic, bool):
            raise InvalidArgument(f"from_traffic must be true or false, got {self.from_traffic!r}")
        window = self.traffic_window_minutes
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window <= 31 * 24 * 60:
            raise InvalidArgument(f"traffic_window_minutes must be a positive number of minutes up to 31 days, "
                                  f"got {window!r}")
        object.__setattr__(self, "workload", check_workload(self.workload))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["techniques"] = list(self.techniques) if self.techniques is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimizeOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"unknown optimize option(s) {unknown}; known: {sorted(known)}")
        data = dict(data)
        if data.get("techniques") is not None:
            techniques = data["techniques"]
            if not isinstance(techniques, list | tuple):
                raise InvalidArgument(f"techniques must be a list of names, got {techniques!r}")
            data["techniques"] = tuple(techniques)
        return cls(**data)

    @classmethod
    def from_json(cls, goal: str, text: str) -> OptimizeOptions:
        try:
            data = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"optimize options are not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidArgument("optimize options must be a JSON object")
        return cls.from_dict({**data, "goal": goal})
