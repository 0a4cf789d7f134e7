"""AsyncEngine: the LLMEngine step loop in a background thread, with one async stream per request.

The loop thread is the only one that touches the engine's state; callers talk to it through a
command queue (add, abort) and receive outputs through per-request asyncio queues.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator

from agent.engine.config import EngineConfig
from agent.engine.engine import LLMEngine
from agent.engine.errors import EngineError, InvalidRequest
from agent.engine.sampling import SamplingParams
from agent.engine.sequence import RequestOutput

log = logging.getLogger(__name__)


class EngineDeadError(EngineError):
    """The background loop stopped; requests cannot be served."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ids = itertools.count()
        self.error: BaseException | None = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        return cls(LLMEngine(config))

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        if self.is_running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llmctl-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def stats(self):
        return self.engine.stats()

    # -- requests ---------------------------------------------------------------------------
    async def generate(
        self, request_id: str | None, prompt: str | list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Stream delta outputs; the last has finished=True. Closing the iterator early aborts."""
        if not self.is_running:
            raise EngineDeadError(f"the engine loop is not running ({self.error or 'not started'})")
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            raise InvalidRequest(f"request id {request_id!r} is already in use")
        ids = self.engine.validate(prompt, params)  # raises InvalidRequest here, in the caller
        q: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), q)
        self._commands.put(("add", request_id, ids, params))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wake.set()

    # -- the loop thread --------------------------------------------------------------------
    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            loop, q = stream
            loop.call_soon_threadsafe(q.put_nowait, item)

    def _drain_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, rid, ids, params = cmd
                if rid not in self._streams:
                    continue  # the client left before the loop saw its request
                try:
                    self.engine.add_request(rid, ids, params)
                except EngineError as exc:
                    self._deliver(rid, exc)
            else:
                self.engine.abort(cmd[1])

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                if not self.engine.has_unfinished():
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                for out in self.engine.step():
                    self._deliver(out.request_id, out)
        except BaseException as exc:  # a crash in the loop must reach every waiting client
            log.exception("engine loop crashed")
            self.error = exc
            dead = EngineDeadError(f"engine loop crashed: {exc!r}")
        else:
            dead = EngineDeadError("the engine was stopped")
        for rid in list(self._streams):
            self._deliver(rid, dead)
            self.engine.abort(rid)
