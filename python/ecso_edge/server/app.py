"""The FastAPI application of `ecso-edge serve`: OpenAI-compatible chat completions answered by
ECSO (plain JSON or server-sent events), /v1/models, /health and the demo page. It owns HTTP
concerns only (auth, size limits, status codes, the OpenAI shapes, client disconnects); the order
and execution of requests belong to `RequestQueue`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import time
import os
import traceback
import uuid
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from .._core import EcsoConfig, EcsoResult, StepRecord
from .._core import Session as CoreSession
from ..arguments import INT32_MAX, INT64_MAX, MAX_CACHE_MIB, int_arg
from ..errors import CancelledError, ConfigError, ContextOverflowError, ImageError
from ..images import load_rgb
from ..messages import CoreMessage, CorePart
from ..model import Model, TextModel
from .openai_schema import ChatRequest, RequestError, parse_chat_request, parse_json_body, resolve_image
from .request_queue import EcsoJob, QueueFull, RequestQueue
from .state_store import MAX_SAVE_PERIOD_S, StateFolder, StateSaver, startup_line

__all__ = ["ServerOptions", "create_app"]

# How often a waiting handler checks whether its client is still connected.
_DISCONNECT_POLL_S = 0.1


@dataclass(frozen=True)
class ServerOptions:
    """What `ecso-edge serve` lets its user choose (the model and ECSO config aside). Checked when
    made: a wrong type or a value out of range raises `ConfigError` naming the field."""

    model_name: str = "ecso-edge"
    api_key: Optional[str] = None
    max_queue: int = 8
    # Requests that generate together. 1 by default: each slot adds a context's KV cells (a 7B
    # model at n_ctx 4096: about 2 GiB), and one slot keeps every answer bit-identical to
    # the reference path; raise it for several users or windows at once (docs/parallel.md).
    parallel: int = 1
    max_request_bytes: int = 20 * 1024 * 1024
    default_max_tokens: int = 512
    allow_remote_images: bool = False
    # The folder of the state file that keeps the conversations (KV cells, image encodings) across
    # restarts, saved every state_save_s seconds (0: only at shutdown) when a request ran since the
    # last save; None: nothing is saved (docs/server.md).
    state_dir: Optional[str] = None
    state_save_s: int = 60
    # MiB kept between requests by all slots together (llama-server's --cache-ram): each of the
    # `parallel` slots gets an equal share, rounded down, as its conversation_cache_mib. None: the
    # config's conversation_cache_mib, which bounds each slot on its own.
    cache_ram_mib: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name or not _encodable(self.model_name):
            raise ConfigError(f"ServerOptions.model_name must be a non-empty string of valid Unicode, "
                              f"got {self.model_name!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key
                                         or not all("!" <= c <= "~" for c in self.api_key)):
            # it travels in an HTTP header: a key with other characters could never match
            raise ConfigError("ServerOptions.api_key must be None (no key) or a non-empty string of visible "
                              "ASCII characters (no spaces)")
        _check_int(self, "max_queue", 0, 1_000_000)
        _check_int(self, "parallel", 1, CoreSession.max_parallel)
        _check_int(self, "max_request_bytes", 1, INT64_MAX)
        _check_int(self, "default_max_tokens", 1, INT32_MAX)
        if not isinstance(self.allow_remote_images, bool):
            raise ConfigError(f"ServerOptions.allow_remote_images must be True or False, got {self.allow_remote_images!r}")
        if self.state_dir is not None:
            if not isinstance(self.state_dir, (str, os.PathLike)) or not os.fspath(self.state_dir):
                raise ConfigError(f"ServerOptions.state_dir must be None or a folder path, got {self.state_dir!r}")
            object.__setattr__(self, "state_dir", os.fspath(self.state_dir))
        _check_int(self, "state_save_s", 0, MAX_SAVE_PERIOD_S)
        if self.cache_ram_mib is not None:
            _check_int(self, "cache_ram_mib", 0, MAX_CACHE_MIB)
            if self.cache_ram_mib and self.cache_ram_mib // self.parallel == 0:
                raise ConfigError(f"ServerOptions.cache_ram_mib (--cache-ram) is {self.cache_ram_mib} MiB for "
                                  f"{self.parallel} parallel slots, less than 1 MiB each: give 0 (keep nothing "
                                  f"between requests) or at least {self.parallel}")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _check_int(options: ServerOptions, name: str, low: int, high: int) -> None:
    value = getattr(options, name)
    try:
        checked = int_arg(name, value, low, high)
    except (TypeError, ConfigError):
        raise ConfigError(f"ServerOptions.{name} must be an integer from {low} to {high}, got {value!r}") from None
    # a NumPy integer passes the rule: keep the plain int, as Model and Session do
    object.__setattr__(options, name, checked)


class _ClientGone(Exception):
    """The client disconnected while its request waited or ran; nothing is left to answer."""


def create_app(model: Model, config: EcsoConfig, options: ServerOptions, judge_model: Optional[TextModel] = None,
               judge_format: Optional[str] = None, *, state_folder: Optional[StateFolder] = None) -> FastAPI:
    """A FastAPI app serving ECSO over `model` with `config` (and a guard model judging step 2 when
    `judge_model` is given); `options.parallel` requests run together, the others wait in order.
    With `options.state_dir` the session starts from the folder's state file and saves to it
    (`state_folder`: that folder, already checked and held, as `serve` does before the model loads)."""
    if options.cache_ram_mib is not None:
        config = config.replace(conversation_cache_mib=options.cache_ram_mib // options.parallel)
    if state_folder is None and options.state_dir is not None:
        state_folder = StateFolder(options.state_dir, "ServerOptions.state_dir")
    try:
        with warnings.catch_warnings():
            # a refused state file is said in one line of the server's own (startup_line)
            warnings.filterwarnings("ignore", "ecso-edge: starting with an empty cache", RuntimeWarning)
            queue = RequestQueue(model, config, options.max_queue, options.parallel, judge_model, judge_format,
                                 state=state_folder.state_path if state_folder is not None else None)
    except BaseException:
        if state_folder is not None:
            state_folder.release()
        raise
    saver = None
    if state_folder is not None:
        saver = StateSaver(state_folder, queue.session, queue.finished, options.state_save_s)
        print(startup_line(saver), file=sys.stderr, flush=True)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(app.state.queue.close)
        if app.state.state_saver is not None:  # after the queue: nothing runs while the last save is made
            await run_in_threadpool(app.state.state_saver.close)

    app = FastAPI(title="ecso-edge", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    # The handlers take the queue from the app, never from this closure: FastAPI keeps handler
    # functions in a process-wide cache, which would keep every app's Session (its KV cache) alive.
    app.state.queue = queue
    app.state.state_saver = saver
    del queue, saver

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.to_body(), status_code=e.status, headers=headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception) -> Response:
        # A bug, never the client's fault: a generic 500 with an id to find the details by in the
        # server's log (Starlette re-raises the exception after this answer, so uvicorn logs it).
        request_id = "req-" + uuid.uuid4().hex
        print(f"ecso-edge serve: internal error in {request.method} {request.url.path} ({request_id}): "
              f"{type(e).__name__}", file=sys.stderr, flush=True)
        return _internal_error_response(request_id)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, e: QueueFull) -> Response:
        body = RequestError(503, str(e), code="queue_full", error_type="server_busy").to_body()
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(e.retry_after_s)})

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise RequestError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")

    @app.get("/", response_class=HTMLResponse)
    async def demo_page() -> HTMLResponse:
        page = resources.files("ecso_edge.server").joinpath("demo.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{MODEL_NAME}}", _html_escape(options.model_name)))

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        saver: Optional[StateSaver] = request.app.state.state_saver
        return {"status": "ok", "model": options.model_name, **request.app.state.queue.stats(),
                "state": saver.report() if saver is not None else None}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {
            "object": "list",
            "data": [{"id": options.model_name, "object": "model", "created": created, "owned_by": "ecso-edge"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        queue: RequestQueue = request.app.state.queue
        check_key(request)
        body = await _read_body(request, options.max_request_bytes)
        chat = parse_chat_request(parse_json_body(body))
        conversation = await run_in_threadpool(_conversation, chat, options, config.max_image_pixels)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

        def sink(kind: str, value: object) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        job = EcsoJob(conversation, chat.max_tokens or options.default_max_tokens, sink, _sampling(chat),
                      stream=chat.stream)
        queue.submit(job)
        waiter = _EventWaiter(request, events, queue, job)
        try:
            # Streamed or not, nothing is sent before the first event: the judge speaks before
            # the first piece, so an error (context overflow, ...) still gets its own status.
            kind, value = await waiter.next()
        except _ClientGone:
            return Response(status_code=499)
        if kind == "error":
            return _error_response(value, job.id)
        context = _ReplyContext(job, chat, options.model_name)
        if not chat.stream:
            try:
                while kind == "piece":  # (a non-streamed job sends no pieces; kept for safety)
                    kind, value = await waiter.next()
            except _ClientGone:
                return Response(status_code=499)
            if kind == "error":
                return _error_response(value, job.id)
            assert isinstance(value, EcsoResult)
            return JSONResponse(context.completion(value))
        return EventSourceResponse(_sse_events(waiter, context, kind, value), ping=15)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body ({declared} bytes) is over the server's limit of {limit} bytes",
                           code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is over the server's limit of {limit} bytes",
                               code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _conversation(chat: ChatRequest, options: ServerOptions, max_pixels: int) -> list[CoreMessage]:
    """The request's messages as the core takes them, every image fetched and decoded now, in the
    handler, so a bad image is answered 400 (naming its part) without waiting in the queue."""
    out: list[CoreMessage] = []
    for message in chat.messages:
        parts: list[CorePart] = []
        for part in message.parts:
            if isinstance(part, str):
                parts.append(part)
                continue
            try:
                data = resolve_image(part.url, allow_remote=options.allow_remote_images,
                                     max_bytes=options.max_request_bytes)
                rgb = load_rgb(data, max_pixels=max_pixels)
            except RequestError as e:
                raise RequestError(e.status, f"{part.param}: {e.message}", param=part.param, code=e.code) from None
            except ImageError as e:
                raise RequestError(400, f"{part.param}: {e}", param=part.param, code="invalid_image") from None
            parts.append((rgb.data, rgb.width, rgb.height))
        out.append((message.role, parts))
    return out


def _sampling(chat: ChatRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if chat.temperature is not None:
        fields["temperature"] = chat.temperature
    if chat.top_p is not None:
        fields["top_p"] = chat.top_p
    if chat.seed is not None:
        fields["seed"] = chat.seed
    return fields


def _error_response(error: object, request_id: str) -> Response:
    """The answer to a job that ended in `error`. The input's faults are 400 with the runtime's
    message (written for users); anything else is a generic 500 that shows no internal detail,
    only the request id under which the server's log (stderr) has the exception."""
    if isinstance(error, ImageError):
        e = RequestError(400, str(error), param="image_url", code="invalid_image")
    elif isinstance(error, ContextOverflowError):
        e = RequestError(400, str(error), code="context_length_exceeded")
    elif isinstance(error, ConfigError):
        e = RequestError(400, str(error), code="invalid_config")
    elif isinstance(error, CancelledError):
        e = RequestError(503, f"the request was cancelled: {error}", code="cancelled", error_type="server_error")
    else:
        print(f"ecso-edge serve: request {request_id} failed:", file=sys.stderr)
        if isinstance(error, BaseException):
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        else:
            print(repr(error), file=sys.stderr)
        sys.stderr.flush()
        return _internal_error_response(request_id)
    return JSONResponse(e.to_body(), status_code=e.status)


def _internal_error_response(request_id: str) -> Response:
    body = RequestError(500, f"internal server error (request id {request_id}; the details are in the server's log)",
                        code="internal_error", error_type="server_error").to_body()
    return JSONResponse(body, status_code=500, headers={"x-request-id": request_id})


class _EventWaiter:
    """Reads a job's events without losing any, and cancels the job if its client goes away."""

    def __init__(self, request: Request, events: "asyncio.Queue[tuple[str, object]]", queue: RequestQueue,
                 job: EcsoJob) -> None:
        self._request = request
        self._events = events
        self._queue = queue
        self.job = job
        self._pending: Optional[asyncio.Task[tuple[str, object]]] = None
        self._last_check = time.monotonic()

    async def next(self) -> tuple[str, object]:
        while True:
            # checked by the clock, not only when idle: a stream of pieces must not hide a disconnect
            now = time.monotonic()
            if now - self._last_check >= _DISCONNECT_POLL_S:
                self._last_check = now
                if await self._request.is_disconnected():
                    self.cancel()
                    raise _ClientGone()
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._events.get())
            done, _ = await asyncio.wait({self._pending}, timeout=_DISCONNECT_POLL_S)
            if done:
                task, self._pending = self._pending, None
                return task.result()

    def cancel(self) -> None:
        """Stop this job (its own cancel token: it cannot be lost, nor reach another job)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.job.state not in ("done", "dropped"):
            self._queue.cancel(self.job)


class _ReplyContext:
    """Builds the OpenAI-shaped replies (a completion, or stream chunks) for one job."""

    def __init__(self, job: EcsoJob, chat: ChatRequest, model_name: str) -> None:
        self.job = job
        self.chat = chat
        self.model_name = model_name
        self.created = int(time.time())

    def ecso(self, r: EcsoResult) -> dict[str, Any]:
        out: dict[str, Any] = {
            "unsafe": r.unsafe,
            "verdict_text": r.verdict_text,
            "caption": r.caption,
            "captions": list(r.captions),
            "judged": r.judged,
            "verdict_forced": r.verdict_forced,
            "query": self.chat.query,
            "stats": _jsonable(r.stats),
            "timings": {"queue_s": self.job.queue_seconds, "run_s": self.job.run_seconds},
        }
        if self.chat.include_first_answer:
            out["first_answer"] = r.initial_answer
        return out

    @staticmethod
    def answer_step(r: EcsoResult) -> Optional[StepRecord]:
        """The step whose text the user gets: the eyes-closed answer when unsafe, else the first."""
        wanted = "text_only" if r.unsafe else "answer"
        return next((step for step in r.steps if step.name == wanted), None)

    def usage(self, r: EcsoResult) -> dict[str, Any]:
        """OpenAI's usage of the conversation's prompt (step 1's) and of the answer the user gets;
        `cached_tokens`: the prompt's tokens reused from the KV cache (an earlier turn's)."""
        first = r.steps[0].stats if r.steps else {}
        prompt = int(first.get("prompt_tokens", 0))
        step = self.answer_step(r)
        completion = len(step.tokens) if step is not None else 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": int(first.get("tokens_reused", 0))}}

    def finish_reason(self, r: EcsoResult) -> str:
        step = self.answer_step(r)
        return "length" if step is not None and step.stop_reason != "eos" else "stop"

    def completion(self, r: EcsoResult) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": r.answer},
                "finish_reason": self.finish_reason(r),
            }],
            "usage": self.usage(r),
            "ecso": self.ecso(r),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: Optional[str] = None) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }


async def _sse_events(waiter: _EventWaiter, context: _ReplyContext, kind: str,
                      value: object) -> AsyncIterator[dict[str, str]]:
    """The OpenAI chunk stream: a role chunk, one chunk per piece, a final chunk carrying
    finish_reason, usage and the `ecso` object, then [DONE]. A disconnect cancels the job."""
    finished = False
    try:
        yield {"data": json.dumps(context.chunk({"role": "assistant", "content": ""}))}
        while kind == "piece":
            yield {"data": json.dumps(context.chunk({"content": value}))}
            kind, value = await waiter.next()
        if kind == "error":
            body = json.loads(bytes(_error_response(value, context.job.id).body))
            yield {"data": json.dumps(body)}
        else:
            assert isinstance(value, EcsoResult)
            final = context.chunk({}, context.finish_reason(value))
            final["usage"] = context.usage(value)
            final["ecso"] = context.ecso(value)
            yield {"data": json.dumps(final)}
        yield {"data": "[DONE]"}
        finished = True
    except _ClientGone:
        pass
    finally:
        if not finished:
            waiter.cancel()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
