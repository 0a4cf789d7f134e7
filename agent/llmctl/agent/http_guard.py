"""Limits on what one HTTP client may cost a server: how big a request body is, how slowly a request arrives.

Used by `llmctl serve` and the gateway alike. The body limit (BodyLimit) answers 413 with an OpenAI error body
as soon as the declared or received length passes it, before the rest is read (FastAPI's own `max_body_size`
answers a declared-too-long body in plain text, whatever the app's error handlers say). The read deadline is uvicorn's h11
protocol with a timer: a client must deliver a request's line, headers and body within `read_timeout_s` of
connecting (or of the request's first byte on a kept-alive connection), else it gets a 408 and the connection
is closed. Without it a slowloris client, sending a byte every few seconds, holds its socket and, once its
headers are in, its request task for as long as it likes: uvicorn times out idle kept-alive connections only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_BODY_BYTES = 16 * 2**20
"""A prompt at the longest context we serve is well under 2 MiB of JSON; 16 MiB leaves room for chat history."""
READ_TIMEOUT_S = 30.0
"""How long a client may take to send one whole request (line, headers and body)."""
MAX_HEADER_BYTES = 64 * 2**10
"""h11's bound on an incomplete request line plus headers; more is a 400 from uvicorn."""


class BodyLimit:
    """ASGI middleware: a request body over max_bytes is a 413. A declared Content-Length over it is answered
    before anything is read; a chunked body when its count passes it, as an HTTPException from the read,
    which the app's own handler turns into its error body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def message(self) -> str:
        return f"The request body is larger than the {self.max_bytes} bytes this server accepts."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            body = {"error": {"message": self.message(), "type": "invalid_request_error", "param": None,
                              "code": "request_too_large"}}
            return await JSONResponse(body, status_code=413, headers={"connection": "close"})(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self.message())
            return message

        await self.app(scope, limited, send)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on reading each request."""

    read_timeout_s = READ_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()  # a client that connects and sends nothing is held to the same deadline

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            if self._read_deadline is None:
                self._arm()  # the first bytes of the next request on a kept-alive connection
        else:
            self._disarm()  # the request is complete (or the connection is ending)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self.conn.their_state is h11.SEND_BODY else None
        answered = cycle is not None and cycle.response_started
        if not answered and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send_408(partial=self.conn.their_state is h11.IDLE)
        if cycle is not None and not cycle.response_complete:
            # The app's task waiting for the body gets a disconnect, and whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _send_408(self, partial: bool) -> None:
        message = f"The request was not received within {self.read_timeout_s:g} s; the connection is closed."
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": "request_timeout"}}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        try:
            if partial:
                # h11 answers only a request it has parsed; with the headers incomplete, write the bytes ourselves.
                head = b"HTTP/1.1 408 Request Timeout\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
                self.transport.write(head + b"\r\n" + body)
                return
            self.transport.write(self.conn.send(h11.Response(status_code=408, headers=headers,
                                                             reason=b"Request Timeout")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # h11 will not answer in this state; closing is answer enough


def guarded_http(read_timeout_s: float = READ_TIMEOUT_S) -> type[GuardedH11Protocol]:
    """The protocol class with its deadline, for uvicorn.Config(http=...)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"read_timeout_s": read_timeout_s})


def uvicorn_limits(read_timeout_s: float = READ_TIMEOUT_S) -> dict[str, Any]:
    """The uvicorn.Config keyword arguments every llmctl HTTP server runs with."""
    return {"http": guarded_http(read_timeout_s), "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "timeout_keep_alive": 5}
