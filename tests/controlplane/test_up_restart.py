"""The supervisor's restart policy (up_restart.py) as pure functions; the real kills are in test_cli_up.py."""

from __future__ import annotations

import signal

import pytest

from llmctl.controlplane.up_restart import (
    RESTART_CAP_S,
    STABLE_S,
    ChildRestarts,
    exit_reason,
    restart_delay,
)


def test_restart_delay_doubles_from_one_second_to_the_cap() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert restart_delay(10_000) == RESTART_CAP_S
    assert restart_delay(3, base_s=0.5, cap_s=60) == 2.0
    with pytest.raises(ValueError, match="crashes_in_a_row"):
        restart_delay(0)


def test_crashes_in_a_row_back_off_and_a_stable_run_starts_over() -> None:
    child = ChildRestarts(started_at=0.0)
    now = 0.0
    delays = []
    for _ in range(4):  # dies 1 s after each start: a crash loop
        now += 1.0
        delays.append(child.died(-signal.SIGKILL, now))
        assert child.restart_at == now + delays[-1]
        now = child.restart_at
        child.restarted(now)
    assert delays == [1, 2, 4, 8] and child.restarts == 4 and child.restart_at is None

    now += STABLE_S  # up long enough to count as healthy
    assert child.died(3, now) == 1
    assert child.as_state() == {
        "count": 4,
        "last_exit": "code 3",
        "last_exit_at": child.last_exit_at,
        "waiting": True,
    }


def test_exit_reason_names_the_signal() -> None:
    assert exit_reason(0) == "code 0"
    assert exit_reason(2) == "code 2"
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_reason(-signal.SIGTERM) == "killed by SIGTERM"
    assert exit_reason(-200) == "killed by signal 200"
