"""The autoscaling policy as pure code (no SQL, no I/O): from one deployment's signals to a replica count.

Each evaluation turns the signals into a recommendation: the max over signals of ceil(load / target),
clamped to [min, max]:
  queue     requests waiting for admission on the ready replicas, plus those the gateway holds for the
            deployment, over target_queue waiting requests per replica;
  kv_usage  the ready replicas' KV-cache usage summed (each 0..1), over target_kv_usage per replica: a
            replica busy enough to fill its cache counts even when nothing waits.
Windows (as Kubernetes' HPA stabilization windows): the count goes up to the smallest recommendation of the
last scale_up_window_s, so only a rise that lasted the whole window counts, and down to the largest of the
last scale_down_window_s, so one quiet reading does not stop replicas; each change moves at most max_step
replicas. Load that alternates within a window therefore moves nothing: no flapping.

Never stuck, never fooled (each case has a test in tests/controlplane/test_autoscaling_policy.py):
  - a NaN, infinite or negative reading, and one older than stale_after_s, is missing, not zero;
  - replicas that are not READY (starting, draining, failed, on a dead node) are left out: the requests they
    hold are not load another replica could take, and a dead replica's last zeros are not idleness;
  - a replica that reports waiting requests but runs none is stuck (an engine with room admits what waits):
    its queue is left out, so a stuck queue neither holds replicas up nor calls for more;
  - with no usable reading at all the count holds (signal "no data"), except that a deployment at zero
    replicas with requests held at the gateway gets one at once, and that [min, max] always applies;
  - a window counts only once the recommendations it holds span it (after a control-plane restart nothing
    moves until they do), so gaps between evaluations delay a change but never freeze it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass


class Mode(enum.StrEnum):
    ON = "on"
    ADVISORY = "advisory"
    """Compute and record every decision, apply none."""
    OFF = "off"


class PolicyError(ValueError):
    """A policy that cannot work; the message says which value and why."""


@dataclass(frozen=True)
class AutoscalePolicy:
    min_replicas: int = 1
    max_replicas: int = 4
    target_queue: float = 4.0
    """Waiting requests per replica the deployment should run at."""
    target_kv_usage: float | None = 0.6
    """KV-cache usage per replica (0..1) to run at; None leaves the signal out. 0.6 keeps warm capacity: a
    burst outruns a cold start of minutes, and at 0.8 a simulated day missed its queue-wait SLO 5x as often
    (docs/autoscaling.md, Simulation)."""
    scale_up_window_s: float = 30.0
    scale_down_window_s: float = 600.0
    max_step: int = 2
    mode: Mode = Mode.ON
    stale_after_s: float = 15.0
    """Readings older than this are missing (agents report every few seconds)."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise PolicyError(f"need 0 <= min <= max and max >= 1, got min {self.min_replicas}, "
                              f"max {self.max_replicas}")
        if not self.target_queue > 0:
            raise PolicyError(f"target queue must be > 0 waiting requests per replica, got {self.target_queue}")
        if self.target_kv_usage is not None and not 0 < self.target_kv_usage <= 1:
            raise PolicyError(f"target KV usage must be in (0, 1], got {self.target_kv_usage}")
        if self.scale_up_window_s < 0 or self.scale_down_window_s < 0:
            raise PolicyError("windows must be >= 0 seconds")
        if self.max_step < 1:
            raise PolicyError(f"max step must be >= 1, got {self.max_step}")
        if not self.stale_after_s > 0:
            raise PolicyError(f"stale_after_s must be > 0, got {self.stale_after_s}")


@dataclass(frozen=True)
class ReplicaReading:
    """One replica as the autoscaler sees it: its state and its latest engine statistics."""

    replica_id: int
    ready: bool
    """READY and routed: neither starting, nor draining, nor on a lost node."""
    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None
    age_s: float | None = None
    """Seconds since the reading arrived; None: no reading yet."""


@dataclass(frozen=True)
class Signals:
    replicas: tuple[ReplicaReading, ...] = ()
    gateway_queue: float | None = None
    """Requests the gateway holds for the deployment (scale to zero); None: unknown."""


@dataclass(frozen=True)
class Recommendation:
    desired: int
    """Clamped to [min, max]; the current count when signal is "no data"."""
    signal: str
    """queue | kv_usage | no data"""
    load: float | None
    target: float | None
    detail: str


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    recommendation: Recommendation
    reason: str

    @property
    def changes(self) -> bool:
        return self.desired != self.current


@dataclass(frozen=True)
class Evaluation:
    """The last evaluation of one deployment, for /metrics and `llmctl autoscale` (status)."""

    deployment: str
    mode: str
    current: int
    desired: int
    signal: str
    load: float | None
    target: float | None
    reason: str

    @classmethod
    def of(cls, deployment: str, mode: Mode, decision: Decision) -> Evaluation:
        rec = decision.recommendation
        return cls(deployment, mode.value, decision.current, decision.desired, rec.signal, rec.load, rec.target,
                   decision.reason)


def _usable(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def recommend(policy: AutoscalePolicy, current: int, signals: Signals) -> Recommendation:
    """One evaluation, before the windows: the max over signals of ceil(load / target), clamped."""
    def clamp(n: int) -> int:
        return max(policy.min_replicas, min(policy.max_replicas, n))

    fresh = [r for r in signals.replicas
             if r.ready and r.age_s is not None and _usable(r.age_s) is not None and r.age_s <= policy.stale_after_s]
    gateway = _usable(signals.gateway_queue)
    waiting = []
    stuck = 0
    for r in fresh:
        w, running = _usable(r.waiting), _usable(r.running)
        if w is None:
            continue
        if w > 0 and running == 0:
            stuck += 1
            continue
        waiting.append(w)
    kv = [v for r in fresh if (v := _usable(r.kv_usage)) is not None]
    candidates: list[Recommendation] = []
    if waiting or gateway is not None and (gateway > 0 or current == 0):
        load = sum(waiting) + (gateway or 0.0)
        n = math.ceil(load / policy.target_queue - 1e-9)
        if current == 0 and load > 0:
            n = max(n, 1)  # requests wait at the gateway for a first replica: do not wait for the window
        note = f", {stuck} stuck replica queue(s) left out" if stuck else ""
        candidates.append(Recommendation(clamp(n), "queue", load, policy.target_queue,
                                         f"{load:g} waiting over {policy.target_queue:g} per replica{note}"))
    if kv and policy.target_kv_usage is not None:
        load = sum(min(v, 1.0) for v in kv)
        n = math.ceil(load / policy.target_kv_usage - 1e-9)
        candidates.append(Recommendation(clamp(n), "kv_usage", load, policy.target_kv_usage,
                                         f"KV usage {load:.2f} summed over {len(kv)} replica(s), target "
                                         f"{policy.target_kv_usage:g} per replica"))
    if not candidates:
        why = "no fresh reading from a ready replica"
        if stuck:
            why += f" ({stuck} stuck queue(s) left out)"
        return Recommendation(clamp(current), "no data", None, None, why + ": holding")
    return max(candidates, key=lambda c: (c.desired, c.signal == "queue"))


class Autoscaler:
    """One deployment's windows: the recommendations of the last max(up, down) window seconds."""

    def __init__(self, policy: AutoscalePolicy) -> None:
        self.policy = policy
        self._history: deque[tuple[float, int]] = deque()
        """(time, recommendation), oldest first; a recommendation stays in force until the next one."""

    def decide(self, current: int, signals: Signals, now: float) -> Decision:
        """The count to run now (now: seconds, monotonic or epoch, but the same clock every call)."""
        p = self.policy
        rec = recommend(p, current, signals)
        if rec.signal != "no data":  # no data is no recommendation: the last one stays in force
            self._history.append((now, rec.desired))
        keep = max(p.scale_up_window_s, p.scale_down_window_s)
        while len(self._history) >= 2 and self._history[1][0] <= now - keep:
            self._history.popleft()  # the one left before the cutoff is what was in force at the window's start
        if current < p.min_replicas or current > p.max_replicas:
            desired = max(p.min_replicas, min(p.max_replicas, current))
            return Decision(current, desired, rec, f"outside [{p.min_replicas}, {p.max_replicas}]: to {desired}")
        if current == 0 and rec.signal == "queue" and rec.desired > 0:
            desired = min(rec.desired, p.max_step)
            return Decision(current, desired, rec, f"requests wait and none serves: from zero to {desired}")
        up = self._window_value(now, p.scale_up_window_s, min)
        if up is not None and up > current:
            desired = min(up, current + p.max_step)
            return Decision(current, desired, rec, f"{rec.signal} called for {up} or more throughout the last "
                                                   f"{p.scale_up_window_s:g}s: up to {desired}")
        down = self._window_value(now, p.scale_down_window_s, max)
        if down is not None and down < current:
            desired = max(down, current - p.max_step)
            return Decision(current, desired, rec, f"at most {down} needed throughout the last "
                                                   f"{p.scale_down_window_s:g}s: down to {desired}")
        return Decision(current, current, rec, f"holding at {current}: {rec.detail}")

    def _window_value(self, now: float, window_s: float, pick) -> int | None:
        """min or max of the recommendations in force during the last window_s; None until the history spans
        the window (right after a start, or a change of policy)."""
        if not self._history:
            return None
        start = now - window_s
        if window_s <= 0:
            return self._history[-1][1]
        if self._history[0][0] > start:
            return None
        values = [d for i, (t, d) in enumerate(self._history)
                  if t >= start or i + 1 < len(self._history) and self._history[i + 1][0] > start]
        return pick(values)
