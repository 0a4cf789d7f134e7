"""$LLMCTL_HOME/up.json and the processes it names: read, write (0600), start, check and stop them.

A pid alone is not proof: after a reboot or long uptime another program may hold it. Each pid is kept
with its process's start time and only a process that matches both is treated as ours. The start time is
counted from boot (/proc/<pid>/stat), not read off the wall clock: a wall-clock start is derived from the
clock's present reading, so a clock step (NTP, a resumed VM) moved it and `llmctl down` lost its processes.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

UP_FILE = "up.json"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
START_TIMES = "pid_boot_start_s"
"""up.json's {pid: start_time(pid)}; the older wall-clock "pid_start_times" is ignored (a pid alone counts)."""
LOCAL_NODE = "local"
"""The node name of the agent `llmctl up` runs."""


def read_state(home: Path) -> dict[str, Any]:
    """up.json as a dict; {} when it is absent or unreadable."""
    try:
        data = json.loads((Path(home) / UP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(home: Path, state: dict[str, Any]) -> None:
    """Replace up.json atomically; created 0600 because it holds an API key and the admin token."""
    path = Path(home) / UP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{UP_FILE}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(temporary, 0o600)  # O_CREAT's mode is ignored when a stale temporary file already existed
    os.replace(temporary, path)


def clear_pids(home: Path) -> None:
    """Forget the processes (they are stopped); keep the key, token and addresses for the next `up`."""
    state = read_state(home)
    if not state:
        return
    state["pids"] = {}
    state[START_TIMES] = {}
    if state.get("state") != "failed":
        state["state"] = "stopped"
    write_state(home, state)


def start_time(pid: int) -> float | None:
    """When the process started, in seconds after boot; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (2nd field) is in parentheses and may hold spaces; the 22nd field is starttime.
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    import psutil

    try:  # no procfs (macOS): the wall-clock start, as good as the clock
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent has not collected it yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def live_pids(state: dict[str, Any]) -> dict[str, int]:
    """The processes named in up.json that still run and are the same processes (same start time)."""
    started = state.get(START_TIMES) or {}
    found = {}
    for name, pid in (state.get("pids") or {}).items():
        if not isinstance(pid, int) or not alive(pid):
            continue
        recorded, actual = started.get(str(pid)), start_time(pid)
        if recorded is None or actual is None or abs(recorded - actual) < 1.0:
            found[name] = pid
    return found


def kill_tree(pid: int, grace_s: float) -> None:
    """SIGTERM `pid`, give it grace_s to exit, then SIGKILL it and every descendant still alive."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = root.children(recursive=True)
        root.send_signal(signal.SIGTERM)
    except psutil.Error:
        return
    deadline = time.monotonic() + grace_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        family += root.children(recursive=True)
    except psutil.Error:
        pass
    leftovers = [p for p in [root, *family] if _running(p)]
    for process in leftovers:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(leftovers, timeout=5)


def _running(process: Any) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def inherited_env() -> dict[str, str]:
    """The environment minus the variables `llmctl server`/`agent` read as flags: an operator's exported
    LLMCTL_JOIN_TOKEN or LLMCTL_DATABASE_URL must not point this local stack somewhere else."""
    flags = ("LLMCTL_JOIN_TOKEN", "LLMCTL_DATABASE_URL", "LLMCTL_CONTROL_PLANE", "LLMCTL_ADMIN_TOKEN", "LLMCTL_CA",
             "LLMCTL_CERT", "LLMCTL_KEY")
    return {key: value for key, value in os.environ.items() if key not in flags}


def child_setup() -> None:
    """In the child before exec: own process group, and die with the supervisor."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: stop() still stops the children on every normal exit


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        tail = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        return f"no log at {path}"
    return " | ".join(tail) if tail else f"nothing in {path}"


def follow_log(path: Path, offset: int, log: Callable[[str], None]) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        log(line)
    return offset + len(complete)
