"""Where torch work runs. Measured on the 2-core CPU box: once a second thread of the process has run
parallel torch ops, libgomp (torch's OpenMP) holds more threads than there are CPUs and throttles its
workers to sleep after ~100 spins, so every op of the engine thread pays a futex wake-up: 440 -> 300
output tokens/s. So the engine is built and stepped in one thread, and other heavy torch work (the
transformers baselines) runs in a thread of its own that ends, taking its OpenMP team with it,
before the engine starts. The thread that serves HTTP never runs torch ops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_fresh_thread(fn: Callable[..., T], *args, name: str = "llmctl-torch", **kwargs) -> T:
    """Run fn in a new thread, wait for it, return its result or raise its exception."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
