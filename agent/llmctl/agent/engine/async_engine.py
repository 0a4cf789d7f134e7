"""AsyncEngine: the LLMEngine step loop in a background thread, with one async stream per request.

The loop thread is the only one that touches the engine's state; callers talk to it through a
command queue (add, abort, score) and receive outputs through per-request asyncio queues, or for
scoring a future that the loop settles between two steps.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.errors import EngineError, InvalidRequest
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.agent.engine.sequence import RequestOutput, TokenLogprob

log = logging.getLogger(__name__)


def _put_all(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for q, item in batch:
        q.put_nowait(item)


class EngineDeadError(EngineError):
    """The background loop stopped; requests cannot be served."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine | None):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._go = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._scores: collections.deque[tuple[Future, list[int], int]] = collections.deque()
        """Scoring commands the loop has taken but not run yet (loop thread only)."""
        self._thread: threading.Thread | None = None
        self._started = False
        self._stopping = False
        self._ids = itertools.count()
        self.error: BaseException | None = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        """Build the engine in the thread that will step it (see agent/engine/threads.py for why)."""
        self = cls(None)
        built = threading.Event()
        self._spawn(lambda: LLMEngine(config), built)
        built.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error
        return self

    def _spawn(self, build, built: threading.Event) -> None:
        self._thread = threading.Thread(
            target=self._thread_main, args=(build, built), name="llmctl-engine", daemon=True
        )
        self._thread.start()

    def _thread_main(self, build, built: threading.Event) -> None:
        if build is not None:
            try:
                self.engine = build()
            except BaseException as exc:  # raised to from_config's caller
                self.error = exc
                return
            finally:
                built.set()
        self._go.wait()
        if not self._stopping:
            self._loop()

    @property
    def is_running(self) -> bool:
        return self._started and self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        if self.is_running:
            return
        self._stopping = False
        if self._thread is None or not self._thread.is_alive():
            self._go.clear()
            self._spawn(None, threading.Event())
        self._started = True
        self._go.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._go.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._started = False

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

    async def prompt_logprobs(self, token_ids: list[int], num_top: int) -> list[TokenLogprob]:
        """LLMEngine.prompt_logprobs, run by the loop thread between two steps, so it never runs beside
        a step and never blocks the caller's event loop. Cancelling the await drops it if not yet run."""
        if not self.is_running:
            raise EngineDeadError(f"the engine loop is not running ({self.error or 'not started'})")
        future: Future = Future()
        self._commands.put(("score", future, list(token_ids), num_top))
        self._wake.set()
        return await asyncio.wrap_future(future)

    # -- the loop thread --------------------------------------------------------------------
    def _deliver(self, request_id: str, item) -> None:
        self._deliver_many([(request_id, item)])

    def _deliver_many(self, items: list[tuple[str, object]]) -> None:
        """One wake-up per event loop per step: waking the caller's loop once per request would make
        it fight the engine thread for the GIL between every op of the next step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for rid, item in items:
            stream = self._streams.get(rid)
            if stream is not None:
                by_loop.setdefault(stream[0], []).append((stream[1], item))
        for loop, batch in by_loop.items():
            loop.call_soon_threadsafe(_put_all, batch)

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
            elif cmd[0] == "score":
                self._scores.append(cmd[1:])
            else:
                self.engine.abort(cmd[1])

    def _score(self, future: Future, token_ids: list[int], num_top: int) -> None:
        if not future.set_running_or_notify_cancel():
            return  # its caller stopped waiting
        try:
            future.set_result(self.engine.prompt_logprobs(token_ids, num_top))
        except EngineError as exc:
            future.set_exception(exc)
        except Exception as exc:  # scoring uses a scratch KV pool, so a failure is this caller's alone
            log.exception("scoring failed")
            future.set_exception(EngineError(f"scoring failed: {exc!r}"))

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                self.engine.adopt_cpu_affinity()
                if self._scores:
                    self._score(*self._scores.popleft())  # one per step, so scoring and decoding interleave
                if self.engine.has_unfinished():
                    self._deliver_many([(out.request_id, out) for out in self.engine.step()])
                elif not self._scores:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
        except BaseException as exc:  # a crash in the loop must reach every waiting client
            log.exception("engine loop crashed")
            self.error = exc
            dead = EngineDeadError(f"engine loop crashed: {exc!r}")
        else:
            dead = EngineDeadError("the engine was stopped")
        self._close(dead)

    def _close(self, dead: EngineDeadError) -> None:
        """Tell every waiting caller that the loop has ended, including those whose commands it never took."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if cmd[0] == "score":
                self._scores.append(cmd[1:])
            elif cmd[0] == "abort":
                self.engine.abort(cmd[1])
            # an add needs nothing here: its stream, if still open, is told below
        for rid in list(self._streams):
            self._deliver(rid, dead)
            self.engine.abort(rid)
        while self._scores:
            future = self._scores.popleft()[0]
            if future.set_running_or_notify_cancel():
                future.set_exception(dead)
