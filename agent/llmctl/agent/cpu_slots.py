"""CPU cores for CPU replicas: each replica runs on a core set of its own.

Two replicas that each run torch's default thread count on the same cores thrash: OpenMP workers spin
waiting for each other while the other process holds the core (measured on a 2-core box: 8 concurrent
requests took 5.4 s on one replica, 105 s on two unpinned ones). So the agent splits its usable cores into
disjoint sets, one per running replica, pins each replica's threads to its set (sched_setaffinity on every
thread of the process), and the replica's engine runs as many torch threads as its set has cores
(engine.adopt_cpu_affinity). When replicas come and go the sets are recomputed and re-applied, so a lone
replica uses every core and two share them half and half. A node runs at most one replica per core unless
the operator raises --max-replicas explicitly; then sets are shared round-robin, still one thread per core.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("llmctl.agent.cpu_slots")


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask: a container's cpuset, a taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def partition(cpus: list[int], count: int) -> list[list[int]]:
    """`count` core sets over `cpus`: disjoint and as even as possible (contiguous runs, the larger first)
    while count <= len(cpus); past that, one core each, round-robin (shared, never more threads than cores)."""
    if count <= 0:
        return []
    if not cpus:
        raise ValueError("no CPUs to partition")
    if count > len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(count)]
    base, extra = divmod(len(cpus), count)
    sets, at = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        sets.append(cpus[at:at + size])
        at += size
    return sets


def pin_process(pid: int, cpus: list[int]) -> bool:
    """Set the affinity of every thread of process `pid` (sched_setaffinity acts on one thread: threads
    started later inherit their creator's). False if the process is gone."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [pid]
    except OSError:
        return False
    pinned = False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
            pinned = True
        except ProcessLookupError:  # that thread ended meanwhile
            continue
        except OSError as exc:  # e.g. a core outside our own cpuset: leave the thread where it is
            logger.warning("cannot pin thread %d of pid %d to cores %s: %s", tid, pid, cpus, exc)
    return pinned


def affinity_of(pid: int) -> set[int]:
    return set(os.sched_getaffinity(pid))
