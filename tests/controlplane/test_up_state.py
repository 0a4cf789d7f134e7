"""up.json names processes by pid and start time: `llmctl down` stops ours and never a stranger holding a pid."""

from __future__ import annotations

import subprocess
import sys
import time

from llmctl.controlplane.commands.up_state import START_TIMES, live_pids, start_time


def test_a_process_is_ours_only_with_its_recorded_start_time():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = start_time(child.pid)
        assert started is not None
        assert start_time(child.pid) == started  # boot-relative: the same on every read, whatever the clock does
        ours = {"pids": {"agent": child.pid}, START_TIMES: {str(child.pid): started}}
        assert live_pids(ours) == {"agent": child.pid}
        # The pid reused by another program, which started at another time: not ours, left alone.
        stranger = {"pids": {"agent": child.pid}, START_TIMES: {str(child.pid): started - 5.0}}
        assert live_pids(stranger) == {}
        # An up.json from before boot-relative start times: its wall-clock times are not compared.
        older = {"pids": {"agent": child.pid}, "pid_start_times": {str(child.pid): time.time() - 1e6}}
        assert live_pids(older) == {"agent": child.pid}
    finally:
        child.kill()
        child.wait()
    assert live_pids({"pids": {"agent": child.pid}, START_TIMES: {str(child.pid): started}}) == {}
    assert start_time(child.pid) is None
