"""A stored answer in both of its wire shapes: the JSON body of a non-streamed answer and the SSE of a stream.

A miss stores whatever shape the client asked for, as the replica wrote it, and derives the other: a
stream's events are assembled into the body the replica would have returned (per choice: the joined text,
the last finish reason), and a body is cut into the events a stream would have carried (per choice: the
role chunk of a chat, one chunk with the whole text and the finish reason, then the usage chunk and
[DONE]). Both shapes carry the same text; only the chunking of a derived stream differs from a replica's.
Answers with logprobs are kept in their own shape only (assembling logprobs blocks is not worth it).

What a hit returns is fixed when the answer is stored: the replica's bytes with one change, the usage
object, whose `prompt_tokens_details.cached_tokens` becomes the whole prompt (nothing was computed). The
`id` and `created` of the first answer are kept, so every hit of an entry is byte-identical to the others.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

ENTRY_OVERHEAD_BYTES = 256
"""What an entry costs beyond its bodies (key, bookkeeping), counted against the cache's size bound."""


@dataclass(frozen=True)
class CachedAnswer:
    """The bytes a hit returns for each shape (None: that shape is not kept) and the answer's token counts."""

    body: bytes | None
    """The non-streamed answer (application/json)."""
    events: bytes | None
    """The stream, usage chunk included (the gateway's SSE filter hides it from clients that did not ask)."""
    prompt_tokens: int
    completion_tokens: int

    @property
    def size(self) -> int:
        return len(self.body or b"") + len(self.events or b"") + ENTRY_OVERHEAD_BYTES

    def shape(self, stream: bool) -> bytes | None:
        return self.events if stream else self.body


def from_body(kind: str, content: bytes) -> CachedAnswer | None:
    """The answer of a non-streamed 200, or None when it is not a complete answer with usage."""
    obj = _json(content)
    usage = _usage(obj.get("usage")) if obj is not None else None
    choices = obj.get("choices") if obj is not None else None
    if obj is None or usage is None or not _choice_list(choices):
        return None
    hit = {**obj, "usage": _as_cached(usage)}
    events = None if any(c.get("logprobs") is not None for c in choices) else _events_of(kind, hit)
    return CachedAnswer(_render_body(hit), events, usage["prompt_tokens"], usage["completion_tokens"])


def from_events(kind: str, raw: bytes) -> CachedAnswer | None:
    """The answer of a streamed 200 (the replica's bytes, usage chunk included), or None when the stream did
    not end properly: an error event, no usage chunk, or no [DONE] (the client or the replica left)."""
    events = [e for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    if not events or _data(events[-1]) != b"[DONE]":
        return None
    out: list[bytes] = []
    usage: dict[str, Any] | None = None
    first: dict[str, Any] | None = None
    texts: dict[int, list[str]] = {}
    finish: dict[int, Any] = {}
    has_logprobs = False
    for event in events[:-1]:
        obj = _json(_data(event))
        if obj is None or "error" in obj:
            return None
        first = first or obj
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return None
        for choice in choices:
            if not isinstance(choice, dict) or not isinstance(choice.get("index", 0), int):
                return None
            index = choice.get("index", 0)
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                texts.setdefault(index, []).append(text)
            if choice.get("finish_reason") is not None:
                finish[index] = choice["finish_reason"]
            has_logprobs |= choice.get("logprobs") is not None
        if obj.get("usage"):
            usage = _usage(obj["usage"])
            if usage is None:
                return None
            out.append(_event({**obj, "usage": _as_cached(usage)}))
        else:
            out.append(event + b"\n\n")
    if usage is None or first is None:
        return None
    out.append(events[-1] + b"\n\n")
    body = None
    if not has_logprobs:
        chat = kind == "chat"
        indices = sorted(set(texts) | set(finish))
        assembled = [
            {"index": i, "message": {"role": "assistant", "content": "".join(texts.get(i, []))},
             "logprobs": None, "finish_reason": finish.get(i)} if chat else
            {"index": i, "text": "".join(texts.get(i, [])), "logprobs": None, "finish_reason": finish.get(i)}
            for i in indices
        ]
        body = _render_body({"id": first.get("id"), "object": "chat.completion" if chat else "text_completion",
                             "created": first.get("created"), "model": first.get("model"),
                             "choices": assembled, "usage": _as_cached(usage)})
    return CachedAnswer(body, b"".join(out), usage["prompt_tokens"], usage["completion_tokens"])


def _events_of(kind: str, hit: dict[str, Any]) -> bytes:
    """The stream a replica would have sent for this answer (asked for usage, as the gateway always does)."""
    chat = kind == "chat"
    envelope = {"id": hit.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
                "created": hit.get("created"), "model": hit.get("model")}
    out = []
    for choice in hit["choices"]:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            role = {"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""},
                    "logprobs": None, "finish_reason": None}
            out.append(_event({**envelope, "choices": [role], "usage": None}))
            part = {"index": index, "delta": {"content": message.get("content") or ""}, "logprobs": None,
                    "finish_reason": choice.get("finish_reason")}
        else:
            part = {"index": index, "text": choice.get("text") or "", "logprobs": None,
                    "finish_reason": choice.get("finish_reason")}
        out.append(_event({**envelope, "choices": [part], "usage": None}))
    out.append(_event({**envelope, "choices": [], "usage": hit["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return None
    return usage


def _as_cached(usage: dict[str, Any]) -> dict[str, Any]:
    """The usage of a hit: the whole prompt was served from cache (OpenAI's cached_tokens)."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    return {**usage, "prompt_tokens_details": {**details, "cached_tokens": usage["prompt_tokens"]}}


def _choice_list(choices: Any) -> bool:
    return isinstance(choices, list) and bool(choices) and all(isinstance(c, dict) for c in choices)


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _data(event: bytes) -> bytes:
    return b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))


def _event(obj: dict[str, Any]) -> bytes:
    # json.dumps' default separators: what the engine server and the gateway's SSE filter write.
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _render_body(obj: dict[str, Any]) -> bytes:
    # Starlette's JSONResponse rendering, which the engine server answers with: a stored body differs from
    # the replica's only in the usage object.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


class StreamRecorder:
    """Passes a replica's stream through unchanged and keeps a copy of its bytes, up to `limit` (a longer
    stream is relayed in full but not kept)."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], limit: int) -> None:
        self._rest, self._limit = rest, limit
        self._chunks: list[bytes] | None = [first]
        self._size = len(first)

    def __aiter__(self) -> StreamRecorder:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self._rest)  # StopAsyncIteration ends the relay's loop as it would have
        if self._chunks is not None:
            self._size += len(chunk)
            if self._size <= self._limit:
                self._chunks.append(chunk)
            else:
                self._chunks = None
        return chunk

    def recorded(self) -> bytes | None:
        """The bytes relayed so far, or None once they passed the limit."""
        return b"".join(self._chunks) if self._chunks is not None else None
