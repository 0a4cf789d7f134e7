"""What a deployment's live stats did over the last minutes: one sample per poll of the control plane.

Sparklines read it in fixed wall-clock buckets (bucket n covers [n*width, (n+1)*width) seconds since the
epoch), so a bar does not shift as new polls arrive, and replaying recorded samples draws the same lines.
A stat the control plane did not report is absent from the sample, and its bucket stays empty.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmctl.controlplane.proto import llmctl_pb2 as pb

STATS = ("requests_per_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tokens_per_s", "kv_cache_usage",
         "queue_depth")


@dataclass(frozen=True)
class Sample:
    at: float
    values: dict[str, float]
    """Only the stats the control plane reported at `at`."""


def sample_of(stats: pb.DeploymentStats, at: float) -> Sample:
    return Sample(at, {name: getattr(stats, name) for name in STATS if stats.HasField(name)})


class History:
    """Samples of one deployment, oldest first, kept for `keep_s` seconds before the newest."""

    def __init__(self, keep_s: float = 600.0) -> None:
        self.keep_s = keep_s
        self.samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        if self.samples and sample.at < self.samples[-1].at:
            return  # a late duplicate from before a reconnect; time only moves forward here
        self.samples.append(sample)
        while self.samples and self.samples[0].at < sample.at - self.keep_s:
            self.samples.popleft()

    def series(self, stat: str) -> list[tuple[float, float]]:
        """(at, value) for every sample that has `stat`."""
        return [(s.at, s.values[stat]) for s in self.samples if stat in s.values]

    def buckets(self, stat: str, count: int, width_s: float,
                combine: Callable[[Sequence[float]], float] = max) -> list[float | None]:
        """`count` consecutive buckets ending with the newest sample's; None where no sample has `stat`."""
        if not self.samples:
            return [None] * count
        last = math.floor(self.samples[-1].at / width_s)
        grouped: dict[int, list[float]] = {}
        for at, value in self.series(stat):
            index = math.floor(at / width_s)
            if index > last - count:
                grouped.setdefault(index, []).append(value)
        return [combine(grouped[i]) if i in grouped else None for i in range(last - count + 1, last + 1)]
