"""Quality sampling, the gateway's part: decide on arrival which requests are sampled, and after the answer
has gone out hand the sampled ones to the quality worker without waiting.

Nothing here runs on a request's critical path beyond one random draw: the answer text is read from the
bytes already relayed (the SSE filter collects the deltas of sampled streams), and the hand-over is a
put_nowait on a bounded queue. When the worker falls behind, the queue is full and the sample is dropped
and counted; traffic never waits for quality scoring.
"""

from __future__ import annotations

import json
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from llmctl.controlplane.gateway.routes import DeploymentSettings

# Fields of a request that say nothing about what was asked or how it was sampled.
TRANSPORT_FIELDS = ("model", "stream", "stream_options", "user")


@dataclass(frozen=True)
class SampledAnswer:
    """One sampled request and the answer the deployment gave, as the quality worker receives it."""

    deployment: str
    revision: int
    tenant_id: int
    kind: str
    """"chat" or "completion"."""
    request: dict[str, Any]
    """messages or prompt plus the sampling parameters, as the client sent them."""
    answer: str


class SamplingTable(DeploymentSettings[float]):
    """Deployment -> sample rate (0 for a deployment not in it)."""

    def rate(self, deployment: str) -> float:
        return self.get(deployment) or 0.0


class QualitySampler:
    """Draws which requests are sampled and queues their answers for the quality worker."""

    def __init__(self, table: SamplingTable, sink: queue.Queue[SampledAnswer], *,
                 registry: CollectorRegistry | None = None, rng: random.Random | None = None) -> None:
        self.table, self.sink = table, sink
        self._rng = rng or random.Random()
        kwargs = {"registry": registry} if registry is not None else {}
        self.sampled = Counter("llmctl_quality_samples_total", "Answers sampled for quality scoring",
                               ["deployment"], **kwargs)
        self.dropped = Counter("llmctl_quality_samples_dropped_total",
                               "Sampled answers dropped unscored, by reason", ["deployment", "reason"], **kwargs)
        self._lock = threading.Lock()
        self._unrecorded: dict[tuple[str, int], int] = {}

    def draw(self, deployment: str, opted_out: bool) -> bool:
        """Whether this request is sampled (opted-out tenants never are)."""
        if opted_out:
            return False
        rate = self.table.rate(deployment)
        return rate > 0 and (rate >= 1 or self._rng.random() < rate)

    def offer(self, kind: str, body: dict[str, Any], answer_json: dict[str, Any] | None, answer_text: str | None,
              *, deployment: str, revision: int, tenant_id: int) -> None:
        """Queue a finished, sampled request; never blocks. Give the answer as parsed JSON or as text."""
        text = answer_text if answer_text is not None else answer_of(answer_json)
        if text is None:
            return
        request = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
        try:
            self.sink.put_nowait(SampledAnswer(deployment, revision, tenant_id, kind, request, text))
        except queue.Full:
            self.drop(deployment, revision, "queue_full")
            return
        self.sampled.labels(deployment).inc()

    def drop(self, deployment: str, revision: int, reason: str) -> None:
        """Count a sample lost before it was stored; the worker writes the counts to the revision's row."""
        self.dropped.labels(deployment, reason).inc()
        with self._lock:
            key = (deployment, revision)
            self._unrecorded[key] = self._unrecorded.get(key, 0) + 1

    def take_unrecorded_drops(self) -> dict[tuple[str, int], int]:
        with self._lock:
            drops, self._unrecorded = self._unrecorded, {}
        return drops


def answer_of(body: dict[str, Any] | None) -> str | None:
    """The text of the first choice of a completion or chat completion response."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else None


def parse_json(content: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None
