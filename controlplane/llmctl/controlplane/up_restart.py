"""How `llmctl up`'s supervisor restarts a child that died: the backoff schedule and the record it keeps.

A child (the control plane or the agent) that dies is started again on its own; the others keep running,
so replicas go on serving while the control plane restarts. Restarts back off like Kubernetes'
CrashLoopBackOff: 1 s, doubling per crash in a row, at most RESTART_CAP_S; a child that stayed up for
STABLE_S starts over at 1 s. Each restart is counted in up.json under "restarts" (`llmctl ps` shows it).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any

RESTART_BASE_S = 1.0
RESTART_CAP_S = 30.0
STABLE_S = 60.0
"""A child that ran this long before dying counts as healthy: its next restart waits RESTART_BASE_S."""


def restart_delay(crashes_in_a_row: int, base_s: float = RESTART_BASE_S, cap_s: float = RESTART_CAP_S) -> float:
    """Seconds to wait before restarting a child that has now crashed `crashes_in_a_row` times (>= 1)
    without staying up STABLE_S in between: base_s, 2 base_s, 4 base_s, ... at most cap_s."""
    if crashes_in_a_row < 1:
        raise ValueError(f"crashes_in_a_row must be >= 1, got {crashes_in_a_row}")
    return min(base_s * 2.0 ** min(crashes_in_a_row - 1, 30), cap_s)


def exit_reason(returncode: int) -> str:
    """'code 3' or 'killed by SIGKILL' (Popen reports death by signal N as -N)."""
    if returncode >= 0:
        return f"code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


@dataclass
class ChildRestarts:
    """One child's crash history as the watch loop sees it."""

    started_at: float = field(default_factory=time.monotonic)
    crashes_in_a_row: int = 0
    restarts: int = 0
    restart_at: float | None = None
    """Monotonic time of the pending restart; None while the child runs."""
    last_exit: str | None = None
    last_exit_at: float | None = None
    """Wall-clock time (epoch seconds) of the last death."""

    def died(self, returncode: int, now: float) -> float:
        """Record a death at monotonic `now`; returns the delay before the restart."""
        if now - self.started_at >= STABLE_S:
            self.crashes_in_a_row = 0
        self.crashes_in_a_row += 1
        delay = restart_delay(self.crashes_in_a_row)
        self.restart_at = now + delay
        self.last_exit, self.last_exit_at = exit_reason(returncode), time.time()
        return delay

    def restarted(self, now: float) -> None:
        self.restarts += 1
        self.restart_at = None
        self.started_at = now

    def as_state(self) -> dict[str, Any]:
        """The entry kept in up.json's "restarts"."""
        return {
            "count": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "waiting": self.restart_at is not None,
        }
