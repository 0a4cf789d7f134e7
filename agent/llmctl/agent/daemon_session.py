"""One Connect stream's outgoing side: a queue of AgentMessages plus the heartbeat clock.

gRPC reads `requests()` from its own thread; any thread may `send()`. Ending the stream is either a
half-close after what is queued went out (`finish`, used on shutdown) or an immediate cancel (`close`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc

from llmctl.controlplane.proto import llmctl_pb2 as pb

_END = object()


class Session:
    def __init__(self, heartbeat_s: float) -> None:
        assert heartbeat_s > 0
        self.heartbeat_s = heartbeat_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._call: grpc.Future | None = None
        self._done = threading.Event()
        self._closed = False

    @property
    def backlog(self) -> int:
        """Messages queued but not yet taken by gRPC."""
        return self._queue.qsize()

    def send(self, message: pb.AgentMessage) -> None:
        if not self._closed:
            self._queue.put(message)

    def requests(self) -> Iterator[pb.AgentMessage]:
        """The request stream: queued messages in order, and a Heartbeat whenever one is due."""
        next_beat = time.monotonic() + self.heartbeat_s
        while True:
            left = next_beat - time.monotonic()
            if left <= 0:
                next_beat = time.monotonic() + self.heartbeat_s
                yield pb.AgentMessage(heartbeat=pb.Heartbeat(sent_at=time.time()))
                continue
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if item is _END:
                return
            assert isinstance(item, pb.AgentMessage)
            yield item

    def attach(self, call: grpc.Future) -> None:
        """The Connect call reading requests(); cancelled at once if the session was closed meanwhile."""
        with self._lock:
            self._call = call
            closed = self._closed
        call.add_done_callback(lambda _: self._done.set())
        if closed:
            call.cancel()

    def finish(self, timeout: float) -> None:
        """Let queued messages go out, half-close the stream, and give the control plane `timeout`
        seconds to end the call before cancelling it."""
        start = time.monotonic()
        deadline = start + timeout
        while self._queue.qsize() and time.monotonic() < start + timeout / 2:
            time.sleep(0.02)
        with self._lock:
            self._closed = True
            call = self._call
        self._queue.put(_END)
        if call is not None and not self._done.wait(max(deadline - time.monotonic(), 0)):
            call.cancel()

    def close(self) -> None:
        """End the stream now (idempotent)."""
        with self._lock:
            self._closed = True
            call = self._call
        self._queue.put(_END)
        if call is not None:
            call.cancel()


class SilenceWatchdog:
    """Cancels a Connect call when a control plane that pings has sent nothing for `silent_after_s`.

    A frozen or vanished control plane can leave the TCP connection open for many minutes; its pings
    (one per idle heartbeat interval) are what proves it alive. Armed by the first ping, so an older
    control plane that never pings is not taken for dead.
    """

    def __init__(self, call: grpc.Future, *, silent_after_s: float) -> None:
        self.silent_after_s = silent_after_s
        self.fired = False
        self._call = call
        self._armed = False
        self._last = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="agent-stream-watchdog", daemon=True).start()

    def heard(self, ping: bool) -> None:
        self._last = time.monotonic()
        self._armed = self._armed or ping

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if self._armed and time.monotonic() - self._last > self.silent_after_s:
                self.fired = True
                self._call.cancel()
                return
