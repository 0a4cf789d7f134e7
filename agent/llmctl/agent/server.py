"""OpenAI-compatible HTTP API over one AsyncEngine (`llmctl serve`).

Routes: /v1/models, /v1/completions, /v1/chat/completions (both with SSE streaming), /tokenize, /health,
/metrics.
Response shapes follow OpenAI's so the official clients parse them. Bad input gets a 400/404 with an
OpenAI-style error body before any token is produced; a client that goes away aborts its request. A field
the server does not implement is refused unless it means "off", never silently dropped (openai_fields.py).

Prompt scoring, as OpenAI's legacy API and vLLM do it: /v1/completions with echo=true puts the prompt
before the completion, and with logprobs=N its logprobs block covers the prompt tokens first (the first
one null). max_tokens=0 is allowed with echo only, and then nothing is generated. The prompt is scored by
the engine loop between two steps (AsyncEngine.prompt_logprobs). Echo also streams: the prompt comes as
the first chunk, then the generated deltas; with max_tokens=0 that chunk is the whole answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmctl.agent.engine.errors import EngineError, InvalidRequest
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.agent.http_guard import MAX_BODY_BYTES, READ_TIMEOUT_S, BodyLimit, uvicorn_limits
from llmctl.agent.metrics import ServerMetrics
from llmctl.agent.openai_fields import UnknownFields, check_fields
from llmctl.agent.openai_protocol import (
    FIELD_NAMES,
    MAX_TOP_LOGPROBS,
    ApiError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingRequest,
    TokenizeRequest,
    chat_logprobs,
    completion_logprobs,
    error_response,
    sse,
    usage,
    validation_message,
)
from llmctl.agent.openai_schema import (
    ChatCompletion,
    Completion,
    Health,
    ModelCard,
    ModelList,
    Tokens,
    finish_openapi,
    responses,
)

if TYPE_CHECKING:
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.engine.sequence import RequestOutput, TokenLogprob

logger = logging.getLogger("llmctl.server")
T = TypeVar("T")

COMPLETION_DEFAULT_MAX_TOKENS = 16
"""OpenAI's and vLLM's default for /v1/completions. Chat defaults to the rest of the context, as vLLM does."""
DISCONNECT_POLL_S = 0.1
"""How often a request that has sent nothing yet checks whether its client is still there."""


class _Job:
    """One accepted request: its id, prompt, sampling and how to render its choices."""

    def __init__(self, kind: str, body: SamplingRequest, model: str, prompt_ids: list[int],
                 params: SamplingParams, top_logprobs: int, echo: str | None = None,
                 first_token: str | None = None, generates: bool = True):
        self.chat = kind == "chat"
        # echo: the prompt text to put before the completion; first_token: the prompt's first token, which
        # opens an echoed logprobs block; generates: False for echo with max_tokens 0 (no engine request).
        self.echo, self.first_token, self.generates = echo, first_token, generates
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = "chat.completion" if self.chat else "text_completion"
        self.created, self.model = int(time.time()), model
        self.prompt_ids, self.params, self.top_logprobs = prompt_ids, params, top_logprobs
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.text_offset = 0

    def envelope(self, choices: list[dict[str, Any]], chunk: bool, **extra: Any) -> dict[str, Any]:
        obj = self.object + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def logprobs(self, lps: list[TokenLogprob] | None, echoed: bool = False) -> dict[str, Any] | None:
        """echoed: lps follow the prompt's first token, which the block starts with."""
        if self.params.logprobs is None or lps is None:
            return None
        if self.chat:
            return chat_logprobs(lps, self.top_logprobs)
        block = completion_logprobs(lps, self.text_offset, self.first_token if echoed else None)
        self.text_offset += sum(map(len, block["tokens"]))
        return block

    def choice(self, text: str, lps: list[TokenLogprob] | None, finish: str | None, delta: bool,
               echoed: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": self.logprobs(lps, echoed), "finish_reason": finish}
        body = {"content": text} if delta else {"role": "assistant", "content": text}
        return {"index": 0, ("delta" if delta else "message"): body, "logprobs": self.logprobs(lps),
                "finish_reason": finish}


class EventStream(StreamingResponse):
    """Closes its generator when the response ends: on disconnect Starlette stops iterating but leaves a
    generator paused at a `yield` open until GC, and closing it is what aborts the request."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class _Api:
    """Request handling around one engine; the route functions in build_app are thin wrappers."""

    def __init__(self, engine: AsyncEngine, model: str) -> None:
        self.engine, self.model = engine, model
        self.info = engine.engine.info
        self.metrics = ServerMetrics(engine.stats, model)
        self.created = int(time.time())
        self.unknown_fields = UnknownFields()

    def check_request(self, body: SamplingRequest, route: str) -> None:
        """The model is this server's, and no field asks for what the server does not implement."""
        self.check_model(body.model)
        self.unknown_fields.note(body, route)
        check_fields(body)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves '{self.model}'.",
                           "model", "model_not_found")

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        # The engine's own tokenizing, so the length checked here is the length it will see.
        return self.engine.engine.tokenize(prompt)

    def job(self, kind: str, body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None,
            logprobs: int | None, top_logprobs: int = 0, echo: str | None = None) -> _Job:
        """echo: the prompt text, to put before the completion (completions only)."""
        if body.n not in (None, 1):
            raise ApiError(400, f"Only n=1 is supported, got n={body.n}.", "n")
        limit, used = self.info.max_model_len, len(prompt_ids)
        if max_tokens is None:
            max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if kind == "completion" else max(limit - used, 1)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if "" in stop:
            raise ApiError(400, "Stop strings must not be empty.", "stop")
        # Echo with max_tokens 0 only scores the prompt. Its params still check the other fields (they want
        # a token to generate), so scoring takes the same values, logprobs included, as generating does.
        generates = echo is None or max_tokens != 0
        params = SamplingParams(
            max_tokens=max_tokens if generates else 1, seed=body.seed, stop=stop,
            stop_token_ids=list(body.stop_token_ids or []),
            ignore_eos=bool(body.ignore_eos), logprobs=logprobs,
            include_stop_str_in_output=bool(body.include_stop_str_in_output),
            **{k: v for k in ("temperature", "top_p", "top_k", "min_p") if (v := getattr(body, k)) is not None},
        )
        if used + max_tokens > limit:
            raise ApiError(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{used + max_tokens} tokens ({used} in the prompt, {max_tokens} for the completion). "
                "Please reduce the length of the prompt or max_tokens.", "max_tokens", "context_length_exceeded",
            )
        first_token = None if echo is None else self.engine.engine.tokenizer.decode(prompt_ids[:1])
        return _Job(kind, body, self.model, prompt_ids, params, top_logprobs, echo, first_token, generates)

    async def echo_logprobs(self, job: _Job) -> list[TokenLogprob]:
        """The logprobs of the prompt's tokens after the first when echo asks for logprobs, else []."""
        if job.echo is None or job.params.logprobs is None:
            return []
        return await self.engine.prompt_logprobs(job.prompt_ids, job.params.logprobs)

    async def unless_gone(self, request: Request, step: Awaitable[T]) -> T | None:
        """Await step, or abort the request and return None once the client has disconnected."""
        task = asyncio.ensure_future(step)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if not task.done() and await request.is_disconnected():
                    task.cancel()  # raises inside the engine's generator, which aborts the request
                    await asyncio.wait({task}, timeout=1.0)
                    return None
            return task.result()
        except BaseException:
            task.cancel()
            raise

    def finished(self, job: _Job, last: RequestOutput | None, failed: bool = False) -> None:
        """Account for the end of a request; aborts it in the engine if it did not finish on its own.

        failed: the engine refused or broke the request, so it is no client's abort.
        A job that generates nothing has no engine request and is not counted.
        """
        if not job.generates:
            return
        if last is not None and last.finished:
            out = last.output
            self.metrics.observe_finished(out.finish_reason or "stop", len(out.token_ids), last.arrival_time,
                                          last.first_token_time, last.finish_time or time.monotonic())
            return
        self.engine.abort(job.id)
        if not failed:
            self.metrics.count_aborted()

    async def complete(self, request: Request, job: _Job) -> Response:
        async def drain() -> tuple[RequestOutput | None, list[TokenLogprob]]:
            last, lps = None, await self.echo_logprobs(job)
            if not job.generates:
                return None, lps
            async for last in self.engine.generate(job.id, job.prompt_ids, job.params):
                lps.extend(last.output.logprobs or [])
            if last is None or not last.finished:
                raise EngineError(f"request {job.id} ended without a final output")
            return last, lps

        try:
            result = await self.unless_gone(request, drain())
        except BaseException as exc:
            self.finished(job, None, failed=isinstance(exc, EngineError))
            raise
        self.finished(job, result[0] if result else None)
        if result is None:
            return Response(status_code=499)  # nobody is listening; never sent
        last, lps = result
        text, finish = (last.output.text, last.output.finish_reason) if last else ("", "length")
        echoed = job.echo is not None
        choice = job.choice((job.echo or "") + text, lps, finish, delta=False, echoed=echoed)
        return JSONResponse(job.envelope([choice], chunk=False, usage=usage(len(job.prompt_ids), last)))

    async def stream(self, request: Request, job: _Job) -> Response:
        outputs = aiter(self.engine.generate(job.id, job.prompt_ids, job.params)) if job.generates else None
        # Wait for the prompt's scoring and the first output before answering, so errors the engine raises
        # still become a proper 400 instead of an event inside a 200 stream.
        try:
            prompt_lps = await self.unless_gone(request, self.echo_logprobs(job))
            first = None
            if prompt_lps is not None and outputs is not None:
                first = await self.unless_gone(request, anext(outputs))
        except BaseException as exc:
            self.finished(job, None, failed=isinstance(exc, EngineError))
            raise
        if prompt_lps is None or (outputs is not None and first is None):
            self.finished(job, None)
            return Response(status_code=499)
        return EventStream(self.events(job, prompt_lps, first, outputs), media_type="text/event-stream")

    async def events(self, job: _Job, prompt_lps: list[TokenLogprob], first: RequestOutput | None,
                     outputs: AsyncIterator[RequestOutput] | None):
        """first and outputs are None when the job generates nothing."""
        # When the client disconnects, Starlette cancels this generator at an await; `finally` then aborts.
        last, failed = first, False
        extra = {"usage": None} if job.include_usage else {}
        try:
            if job.chat:
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None}
                yield sse(job.envelope([role], chunk=True, **extra))
            if job.echo is not None:
                finish = None if job.generates else "length"
                choice = job.choice(job.echo, prompt_lps, finish, delta=True, echoed=True)
                yield sse(job.envelope([choice], chunk=True, **extra))
            out = first
            while out is not None:
                last, delta = out, out.output
                if delta.delta_text or delta.finish_reason or delta.logprobs:
                    choice = job.choice(delta.delta_text, delta.logprobs, delta.finish_reason, delta=True)
                    yield sse(job.envelope([choice], chunk=True, **extra))
                out = await anext(outputs, None)  # None once the engine's stream has ended
            if last is not None and not last.finished:
                raise EngineError(f"request {job.id} ended without a final output")
            if job.include_usage:
                yield sse(job.envelope([], chunk=True, usage=usage(len(job.prompt_ids), last)))
        except EngineError as exc:
            failed = True
            logger.warning("request %s failed mid-stream: %s", job.id, exc)
            yield sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        finally:
            self.finished(job, last, failed=failed)
        yield sse("[DONE]")


def build_app(async_engine: AsyncEngine, served_model_name: str, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving async_engine; its lifespan starts and stops the engine loop. A request body
    over max_body_bytes is a 413."""
    api = _Api(async_engine, served_model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await async_engine.start()
        try:
            yield
        finally:
            await async_engine.stop()

    app = FastAPI(title="llmctl", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    finish_openapi(app)
    app.state.api = api

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        message, param = validation_message(exc)
        return error_response(400, message, param)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return error_response(exc.status, exc.message, exc.param, exc.code)
        if isinstance(exc, InvalidRequest):
            # SamplingParams' messages start with the field name ("top_p must be in (0, 1], got 2").
            word = str(exc).split(" ", 1)[0]
            return error_response(400, str(exc), word if word in FIELD_NAMES else None)
        logger.error("engine error: %s", exc)
        return error_response(500, str(exc))

    app.add_exception_handler(ApiError, on_error)
    app.add_exception_handler(EngineError, on_error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's "There was an error parsing the body" says nothing of why; the cause does.
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            return error_response(400, f"Malformed JSON body: not UTF-8 ({cause.reason} at byte {cause.start}).")
        if isinstance(cause, RecursionError):
            return error_response(400, "Malformed JSON body: nested too deeply.")
        # Keep the exception's headers: a 405 must say which methods the route allows (RFC 9110).
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.get("/health", responses=responses(Health, 503))
    async def health() -> Response:
        if not async_engine.is_running:
            return error_response(503, f"The engine loop is not running ({async_engine.error or 'stopped'}).")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response, responses=responses(None, media_type=CONTENT_TYPE_LATEST))
    async def metrics() -> Response:
        return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": api.model, "object": "model", "created": api.created, "owned_by": "llmctl",
                "max_model_len": api.info.max_model_len}

    @app.get("/v1/models", response_model=None, responses=responses(ModelList))
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", response_model=None, responses=responses(ModelCard, 404))
    async def get_model(name: str) -> dict[str, Any]:
        api.check_model(name)
        return model_card()

    @app.post("/v1/completions", responses=responses(Completion, 400, 404, 408, 413, stream=True))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        api.check_request(body, "/v1/completions")
        if body.max_tokens == 0 and not body.echo:
            raise ApiError(400, "max_tokens must be at least 1; 0 is allowed only with echo=true, which "
                           "returns the prompt (with logprobs=N, its token logprobs) and generates nothing.",
                           "max_tokens")
        prompt = single_prompt(body.prompt)
        prompt_ids = api.prompt_ids(prompt)
        echo = None
        if body.echo:
            # Token-id prompts echo as their decoded text, as vLLM does.
            echo = prompt if isinstance(prompt, str) else async_engine.engine.tokenizer.decode(prompt_ids)
        job = api.job("completion", body, prompt_ids, body.max_tokens, body.logprobs, echo=echo)
        return await (api.stream if body.stream else api.complete)(request, job)

    @app.post("/v1/chat/completions", responses=responses(ChatCompletion, 400, 404, 408, 413, stream=True))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        api.check_request(body, "/v1/chat/completions")
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs to be true.", "top_logprobs")
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {body.top_logprobs}.",
                           "top_logprobs")
        if body.max_completion_tokens is not None and body.max_completion_tokens < 1:
            raise ApiError(400, f"max_completion_tokens must be at least 1, got {body.max_completion_tokens}.",
                           "max_completion_tokens")
        if body.echo:
            raise ApiError(400, "Chat completions do not take echo; to score a prompt, send it to "
                           "/v1/completions with echo=true, logprobs=N and max_tokens=0.", "echo")
        messages = [chat_message(m) for m in body.messages]
        prompt_ids = async_engine.engine.chat_prompt_ids(messages)
        top = body.top_logprobs or 0
        limit = body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
        job = api.job("chat", body, prompt_ids, limit, top if body.logprobs else None, top)
        return await (api.stream if body.stream else api.complete)(request, job)

    @app.post("/tokenize", response_model=None, responses=responses(Tokens, 400, 404, 408, 413))
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """Token ids as this model sees them (vLLM's route): how clients and the quality scorer count and
        align tokens without a tokenizer of their own."""
        api.check_model(body.model)
        engine = async_engine.engine
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "Send exactly one of 'prompt' (text or token ids) or 'messages'.", "prompt")
        if body.messages is not None:
            messages = [chat_message(m) for m in body.messages]
            ids = engine.chat_prompt_ids(messages, add_generation_prompt=body.add_generation_prompt)
        elif isinstance(body.prompt, str):
            ids = engine.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            ids = engine.tokenize(body.prompt) if body.prompt else []
        return {"count": len(ids), "max_model_len": api.info.max_model_len, "tokens": ids}

    return app


def single_prompt(prompt: str | list[int] | list[str] | list[list[int]]) -> str | list[int]:
    """The one prompt of a completions request: a text or token ids, unwrapped from a batch of one."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise ApiError(400, f"Batched prompts are not supported: got {len(prompt)} prompts, send one "
                           "per request.", "prompt")
        return prompt[0]
    return prompt


def chat_message(message: ChatMessage) -> dict[str, Any]:
    """A message as the chat template wants it: text content parts joined into one string."""
    content = message.content
    if isinstance(content, list):
        if any(part.type != "text" for part in content):
            raise ApiError(400, "Only text content parts are supported.", "messages")
        content = "".join(part.text or "" for part in content)
    return (message.model_extra or {}) | {"role": message.role, "content": content or ""}


def run_server(config: EngineConfig, host: str, port: int, graceful_shutdown_s: float = 30.0,
               max_body_bytes: int = MAX_BODY_BYTES, read_timeout_s: float = READ_TIMEOUT_S) -> None:
    """Load the engine, serve it until SIGINT/SIGTERM, then stop the engine loop."""
    import uvicorn

    from llmctl.agent.engine.async_engine import AsyncEngine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = config.served_model_name or config.model
    engine = AsyncEngine.from_config(config)
    app = build_app(engine, name, max_body_bytes=max_body_bytes)
    logger.info("serving %r with an OpenAI-compatible API at http://%s:%d/v1", name, host, port)
    # The grace period bounds how long open streams may delay shutdown; then they are cancelled (aborted).
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_shutdown_s,
                **uvicorn_limits(read_timeout_s))
