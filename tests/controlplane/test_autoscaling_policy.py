"""The autoscaling policy on recorded signal series: bursts, oscillation, NaN, gaps, dead and stuck replicas,
restarts, scale to and from zero. Pure code: each series runs in microseconds."""

from __future__ import annotations

import math

import pytest

from llmctl.controlplane.autoscaling.policy import (
    AutoscalePolicy,
    Autoscaler,
    PolicyError,
    ReplicaReading,
    Signals,
    recommend,
)


def replicas(*waiting: float | None, kv: float | None = None, running: float | None = 2, ready: bool = True,
             age_s: float | None = 1.0) -> tuple[ReplicaReading, ...]:
    return tuple(ReplicaReading(i, ready, w, running, kv, age_s) for i, w in enumerate(waiting))


def run(scaler: Autoscaler, series: list[tuple[float, Signals]], current: int) -> list[tuple[float, int]]:
    """Apply every decision at once (as the job does); returns (time, count) after each evaluation."""
    out = []
    for t, signals in series:
        current = scaler.decide(current, signals, t).desired
        out.append((t, current))
    return out


def every(seconds: float, until: float, signals, start: float = 0.0) -> list[tuple[float, Signals]]:
    """Evaluations every `seconds`; signals(t) gives each one's signals."""
    n = int((until - start) / seconds)
    return [(start + i * seconds, signals(start + i * seconds)) for i in range(n + 1)]


FAST = AutoscalePolicy(min_replicas=1, max_replicas=8, target_queue=4, target_kv_usage=None,
                       scale_up_window_s=0, scale_down_window_s=0, max_step=8)


def test_the_queue_signal_is_waiting_requests_over_the_target_per_replica():
    assert recommend(FAST, 2, Signals(replicas(6, 4))).desired == 3  # ceil(10 / 4)
    assert recommend(FAST, 2, Signals(replicas(4, 4))).desired == 2
    assert recommend(FAST, 2, Signals(replicas(0, 0))).desired == 1  # clamped to min
    assert recommend(FAST, 2, Signals(replicas(100))).desired == 8  # clamped to max
    assert recommend(FAST, 2, Signals(replicas(2), gateway_queue=7)).desired == 3  # the gateway's queue counts


def test_kv_usage_keeps_replicas_that_are_busy_although_nothing_waits():
    policy = AutoscalePolicy(target_queue=4, target_kv_usage=0.8, max_replicas=8)
    rec = recommend(policy, 2, Signals(replicas(0, 0, kv=0.9)))
    assert (rec.desired, rec.signal) == (3, "kv_usage")  # ceil(1.8 / 0.8)
    assert recommend(policy, 2, Signals(replicas(20, 0, kv=0.1))).signal == "queue"  # the larger wins


def test_nan_infinite_and_negative_readings_are_missing_not_zero():
    signals = Signals(replicas(math.nan, 8, math.inf, -3))
    assert recommend(FAST, 4, signals).load == 8
    rec = recommend(FAST, 4, Signals(replicas(math.nan, math.nan)))
    assert (rec.signal, rec.desired) == ("no data", 4)


def test_with_no_usable_reading_the_count_holds_for_as_long_as_it_lasts():
    policy = AutoscalePolicy(min_replicas=1, max_replicas=8, scale_up_window_s=30, scale_down_window_s=60)
    scaler = Autoscaler(policy)
    blind = every(5, 3600, lambda t: Signals(replicas(math.nan, None, kv=math.nan)))
    assert {n for _, n in run(scaler, blind, 3)} == {3}  # neither frozen at 0 nor flapping: held
    stale = every(5, 3600, lambda t: Signals(replicas(50, 50, age_s=120)))
    assert {n for _, n in run(Autoscaler(policy), stale, 3)} == {3}  # old readings are no readings


def test_a_dead_or_draining_replicas_readings_are_not_load():
    # Replica 0 is on a lost node (its last readings said a full queue); replica 1 serves with nothing waiting.
    signals = Signals((ReplicaReading(0, False, waiting=40, running=8, kv_usage=1.0, age_s=1),
                       ReplicaReading(1, True, waiting=0, running=1, kv_usage=0.1, age_s=1)))
    rec = recommend(AutoscalePolicy(min_replicas=1, max_replicas=8), 2, signals)
    assert rec.desired == 1 and rec.load is not None and rec.load < 1


def test_a_stuck_queue_neither_holds_replicas_up_nor_calls_for_more():
    # llm-d #769: aborted requests left in a queue kept a deployment from ever scaling down.
    stuck = Signals((ReplicaReading(0, True, waiting=12, running=0, kv_usage=None, age_s=1),
                     ReplicaReading(1, True, waiting=0, running=1, kv_usage=None, age_s=1)))
    rec = recommend(FAST, 3, stuck)
    assert rec.desired == 1 and "1 stuck" in rec.detail
    assert Autoscaler(FAST).decide(3, stuck, 0.0).desired == 1


def test_a_burst_shorter_than_the_up_window_starts_nothing_a_sustained_one_does_bounded_by_max_step():
    policy = AutoscalePolicy(min_replicas=1, max_replicas=8, target_queue=4, target_kv_usage=None,
                             scale_up_window_s=30, scale_down_window_s=600, max_step=2)
    quiet = lambda t: Signals(replicas(1))  # noqa: E731
    burst = [*every(5, 100, quiet), *every(5, 120, lambda t: Signals(replicas(40)), start=105),
             *every(5, 200, quiet, start=125)]
    assert {n for _, n in run(Autoscaler(policy), burst, 1)} == {1}  # 20 s of burst < 30 s window
    sustained = [*every(5, 100, quiet), *every(5, 400, lambda t: Signals(replicas(40)), start=105)]
    counts = run(Autoscaler(policy), sustained, 1)
    first_up = next(t for t, n in counts if n > 1)
    assert first_up == 135  # 30 s after the rise began
    assert [n for t, n in counts if t == first_up] == [3]  # one step of max_step
    assert max(n for _, n in counts) == 8  # then up to the max, a step per evaluation


def test_oscillating_load_does_not_flap():
    policy = AutoscalePolicy(min_replicas=1, max_replicas=8, target_queue=4, target_kv_usage=None,
                             scale_up_window_s=30, scale_down_window_s=120, max_step=2)
    wave = lambda t: Signals(replicas(2 if int(t // 10) % 2 else 24))  # noqa: E731  (1 vs 6 replicas, 10 s each)
    counts = [n for _, n in run(Autoscaler(policy), every(2, 3600, wave), 2)]
    assert set(counts) == {2}


def test_load_that_goes_away_releases_replicas_only_after_the_down_window_step_by_step():
    policy = AutoscalePolicy(min_replicas=1, max_replicas=8, target_queue=4, target_kv_usage=None,
                             scale_up_window_s=0, scale_down_window_s=600, max_step=2)
    series = [*every(10, 600, lambda t: Signals(replicas(6, 6, 6, 6, 6, 6))),  # ceil(36 / 4) = 9 -> 8
              *every(10, 2000, lambda t: Signals(replicas(0, 0, 0)), start=610)]
    counts = run(Autoscaler(policy), series, 6)
    assert dict(counts)[600] == 8
    assert all(n == 8 for t, n in counts if t < 1200)  # the quiet must last the whole window
    drops = [(t, n) for (t, n), (_, before) in zip(counts[1:], counts, strict=False) if n < before]
    assert drops[0] == (1210, 6) and [n for _, n in drops] == [6, 4, 2, 1]


def test_a_gap_in_the_evaluations_delays_a_change_but_does_not_freeze_it():
    policy = AutoscalePolicy(min_replicas=1, max_replicas=8, target_queue=4, target_kv_usage=None,
                             scale_up_window_s=30, scale_down_window_s=600, max_step=2)
    scaler = Autoscaler(policy)
    run(scaler, every(5, 100, lambda t: Signals(replicas(1))), 1)
    # Nothing for ten minutes (control plane busy, agent away), then a heavy load.
    counts = run(scaler, every(5, 800, lambda t: Signals(replicas(30)), start=700), 1)
    assert dict(counts)[725] == 1 and dict(counts)[730] == 3  # a full window of the new load, then up


def test_after_a_restart_nothing_moves_until_the_window_is_spanned():
    policy = AutoscalePolicy(min_replicas=1, max_replicas=8, target_queue=4, target_kv_usage=None,
                             scale_up_window_s=30, scale_down_window_s=600, max_step=2)
    counts = run(Autoscaler(policy), every(5, 900, lambda t: Signals(replicas(0, 0, 0, 0))), 4)
    assert all(n == 4 for t, n in counts if t < 600) and counts[-1][1] == 1


def test_scale_from_zero_starts_a_replica_at_once_when_requests_wait_at_the_gateway():
    policy = AutoscalePolicy(min_replicas=0, max_replicas=4, scale_up_window_s=60, scale_down_window_s=600)
    scaler = Autoscaler(policy)
    assert scaler.decide(0, Signals(gateway_queue=0), 0.0).desired == 0
    decision = scaler.decide(0, Signals(gateway_queue=3), 5.0)
    assert decision.desired == 1 and "from zero" in decision.reason


def test_scale_to_zero_after_a_quiet_down_window_only_when_min_is_zero():
    quiet = lambda t: Signals(replicas(0, kv=0.0), gateway_queue=0)  # noqa: E731
    opt_in = AutoscalePolicy(min_replicas=0, max_replicas=4, scale_up_window_s=0, scale_down_window_s=300)
    assert run(Autoscaler(opt_in), every(10, 400, quiet), 1)[-1][1] == 0
    default = AutoscalePolicy(min_replicas=1, max_replicas=4, scale_up_window_s=0, scale_down_window_s=300)
    assert run(Autoscaler(default), every(10, 400, quiet), 1)[-1][1] == 1


def test_bounds_apply_at_once():
    policy = AutoscalePolicy(min_replicas=2, max_replicas=4, scale_up_window_s=600, scale_down_window_s=600)
    assert Autoscaler(policy).decide(7, Signals(), 0.0).desired == 4
    assert Autoscaler(policy).decide(1, Signals(), 0.0).desired == 2


@pytest.mark.parametrize("fields, words", [
    (dict(min_replicas=3, max_replicas=2), "min <= max"),
    (dict(max_replicas=0), "max >= 1"),
    (dict(target_queue=0), "target queue"),
    (dict(target_kv_usage=1.5), "KV usage"),
    (dict(scale_up_window_s=-1), "windows"),
    (dict(max_step=0), "max step"),
])
def test_a_policy_that_cannot_work_is_refused_with_the_reason(fields, words):
    with pytest.raises(PolicyError, match=words):
        AutoscalePolicy(**fields)
