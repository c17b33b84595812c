"""The HTTP routes: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus
/health and /metrics. Handlers check the request, find its model (`served`: the one model, or the store's
that it names), render and tokenize the prompt off the event loop, hand a Job to that model's scheduler and
turn its events into a JSON body or server-sent events.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import llama_cpp as L

from ..errors import EdgeError
from ..engine.embedding import LazyEmbedder
from ..engine.reasoning import REASONING, ReasoningSplitter, opened_in, split_reasoning
from ..engine.runtime import Engine
from ..engine.vision import MediaPrompt
from . import grammar, schemas
from .errors import ApiError, bad_request
from .inbox import inbox_for
from .metrics import Metrics
from .pictures import decode_all
from .scheduler import Finished, Job, QueueFull, Scheduler
from .tools import parse_tool_calls

MAX_BODY = 32 << 20  # bytes, room for base64 pictures; a larger request body is refused with 413
RETRY_AFTER_S = 1
CLIENT_GONE = 499  # what /metrics counts for a client that left before its reply (nginx's code)
OPEN_PATHS = ("/health",)  # answered without the API key (load balancers and start-up checks)


@dataclass(frozen=True)
class ServeState:
    engine: Engine
    scheduler: Scheduler
    metrics: Metrics
    model_id: str
    plan: dict
    n_slots: int
    n_ctx_slot: int
    api_key: str | None
    created: int  # when the server started (Unix time), as /v1/models reports it
    embedder: LazyEmbedder  # the model's embedding context, made on the first request for one
    thinks: bool = False  # its chat template teaches it to reason in <think>…</think> before answering
    think: bool | None = None  # thinking on or off where a request does not say (None: the template's default)
    image_urls: bool = False  # --allow-image-urls: pictures named by http(s) URL are fetched (within image_urls' limits)


@dataclass(frozen=True)
class Dialect:
    """Another API served beside OpenAI's on the same port: its routes, and the shape of its errors, which
    every answer under its path prefixes takes (a 401 or 404 there too)."""

    prefixes: tuple[str, ...]
    routes: tuple[Route, ...]
    error_body: Callable[[ApiError], dict]


def error_response(dialects: tuple[Dialect, ...], path: str, err: ApiError) -> JSONResponse:
    """`err` as the API that `path` belongs to writes errors (OpenAI's shape by default)."""
    shape = next((d.error_body for d in dialects if path.startswith(d.prefixes)), ApiError.body)
    return JSONResponse(shape(err), status_code=err.status, headers=err.headers)


# --- request bodies ------------------------------------------------------------------------------------


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON value")


async def read_json(request: Request) -> dict:
    """The request body as a JSON object: at most MAX_BODY bytes, strict JSON (no NaN or Infinity)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, f"the request body is {int(length)} bytes; at most {MAX_BODY} are accepted", "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY} bytes", "request_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks), parse_constant=_no_constants)
    except RecursionError:
        raise bad_request("the body is not usable JSON: nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise bad_request(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object", code="invalid_json")
    return data


# --- running a job -------------------------------------------------------------------------------------


@dataclass
class Prepared:
    tokens: list[int]
    grammar: object | None  # a llama.cpp grammar sampler, or None
    inside: bool | None = None  # a thinking model's reply starts inside its reasoning (None: the model does not think)
    media: MediaPrompt | None = None  # the prompt's text and image chunks, when it has pictures (the scheduler evaluates them)

    def splitter(self) -> ReasoningSplitter | None:
        return ReasoningSplitter(self.inside) if self.inside is not None else None

    def split(self, text: str) -> tuple[str | None, str]:
        """A whole reply as its reasoning (None: none) and its answer."""
        return split_reasoning(text, self.inside) if self.inside is not None else (None, text)


def generating(state: ServeState) -> None:
    """Refuse to generate with a reranker: it has a classifier head, not a language model's, and no chat template."""
    if state.embedder.ranks:
        raise bad_request(f"{state.model_id} is a reranker: it scores documents against a query (POST /v1/rerank) and does not chat "
                          "or complete text", "model", "unsupported_model")


def prepare_prompt(state: ServeState, prompt: str, gen: schemas.Generation, param: str, call_gbnf: str | None = None) -> Prepared:
    """Tokenize and check the prompt, and build the grammar: `call_gbnf` (a forced tool call) or the one
    `response_format` asks for. Runs in a worker thread: both can take a while."""
    generating(state)
    return _checked(state, state.engine.tokenize(prompt), gen, param, call_gbnf)


def prepare_media(state: ServeState, prompt: str, refs: tuple[schemas.ImageRef, ...], gen: schemas.Generation, param: str,
                  call_gbnf: str | None = None) -> Prepared:
    """prepare_prompt for a prompt with pictures (vision.MARKER where each goes): the pictures decoded and split
    into the projector's chunks. Runs in a worker thread."""
    generating(state)
    if state.engine.vision is None:
        raise bad_request(f"{state.model_id} takes no images: it has no projector (serve a vision model with its mmproj GGUF)",
                          refs[0].where, "unsupported_parameter")
    pictures = decode_all(refs, state.image_urls)
    try:
        media = state.engine.media_prompt(prompt, pictures)
    except EdgeError as exc:
        raise bad_request(str(exc), param) from None
    try:
        if media.keys[-1] < 0:
            raise bad_request("the prompt ends with an image: the model needs text after it", param)
        return _checked(state, media.keys, gen, param, call_gbnf, media)
    except BaseException:
        media.close()
        raise


def _checked(state: ServeState, tokens: list[int], gen: schemas.Generation, param: str, call_gbnf: str | None,
             media: MediaPrompt | None = None) -> Prepared:
    """The prompt's tokens checked against a slot's context, with the grammar the reply follows."""
    if len(tokens) >= state.n_ctx_slot:
        raise ApiError(
            400,
            f"the prompt is {len(tokens)} tokens but a slot's context holds {state.n_ctx_slot} (and the reply needs room "
            f"too): shorten the prompt or start the server with a larger --ctx",
            "context_length_exceeded",
            param,
            extra={"prompt_tokens": len(tokens), "n_ctx": state.n_ctx_slot},
        )
    text = call_gbnf or grammar.gbnf(gen.response_format)
    return Prepared(tokens, grammar.grammar_sampler(state.engine.vocab, text) if text else None, media=media)


class Run:
    """One job in the scheduler, seen from the event loop: its events arrive on an asyncio queue."""

    def __init__(self, state: ServeState, prepared: Prepared, gen: schemas.Generation):
        inbox = inbox_for(asyncio.get_running_loop())
        self.events: asyncio.Queue[str | Finished] = asyncio.Queue()

        def deliver(event) -> None:  # called on the scheduler thread
            try:
                inbox.put(self.events, event)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                self.job.cancelled.set()

        self.job = Job(prepared.tokens, gen.sampling, gen.stop, deliver, inbox.wake, grammar=prepared.grammar,
                       media=prepared.media)
        try:
            if state.scheduler.error:
                raise ApiError(500, state.scheduler.error)
            state.scheduler.submit(self.job)
        except (ApiError, QueueFull) as exc:
            if prepared.grammar is not None:
                L.llama_sampler_free(prepared.grammar)
            if prepared.media is not None:
                prepared.media.close()
            if isinstance(exc, ApiError):
                raise
            raise ApiError(
                503,
                f"all {state.n_slots} slots are busy and {state.scheduler.queued} requests wait already: try again shortly",
                "server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None

    async def pieces(self) -> AsyncIterator[str | Finished]:
        """The reply's text as it arrives (what arrived together as one piece), then its Finished."""
        while True:
            batch = await self.next()
            text = "".join(e for e in batch if isinstance(e, str))
            if text:
                yield text
            if isinstance(batch[-1], Finished):
                yield batch[-1]
                return

    async def next(self) -> list[str | Finished]:
        """The next events: at least one, and whatever else has arrived (a busy loop sends them as one chunk)."""
        out = [await self.events.get()]
        while not self.events.empty() and not isinstance(out[-1], Finished):
            out.append(self.events.get_nowait())
        return out

    async def collect(self, request: Request) -> tuple[str, Finished] | None:
        """The whole reply, or None if the client disconnected first (which cancels the job); a failed reply raises."""
        gone = asyncio.ensure_future(_disconnected(request))
        text: list[str] = []
        try:
            while True:
                getter = asyncio.ensure_future(self.next())
                await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return None
                for event in getter.result():
                    if isinstance(event, Finished):
                        if event.reason == "error":
                            raise failed(event)
                        return "".join(text), event
                    text.append(event)
        finally:
            gone.cancel()
            self.job.cancelled.set()  # a no-op once the job has finished


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(done: Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def failed(done: Finished) -> ApiError:
    return ApiError(500, done.message or "the reply failed", "generation_failed")


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def typed_sse(kind: str, data: dict) -> str:
    """A server-sent event named `kind`, whose JSON names its type too (Anthropic's and the Responses API's)."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _stream(run: Run, gen: schemas.Generation, chunk, first: dict | None, whole=None, splitter: ReasoningSplitter | None = None) -> StreamingResponse:
    """Server-sent events: `chunk(text, finish_reason)` per piece, usage if asked, then `data: [DONE]`.
    With `whole`, the text is held back and `whole(text, finished)` gives the last chunks instead (a reply
    that may hold tool calls is only known once complete). With `splitter`, a thinking model's reasoning goes
    out as `chunk(None, None, {"reasoning_content": ...})` deltas."""

    def pieces(parts) -> list[dict]:
        return [chunk(None, None, {"reasoning_content": p.text}) if p.kind == REASONING else chunk(p.text, None) for p in parts]

    async def events():
        if first is not None:
            yield _sse(first)
        held: list[str] = []
        async for event in run.pieces():
            if isinstance(event, str):
                if whole is not None:
                    held.append(event)
                else:
                    for c in pieces(splitter.push(event)) if splitter else [chunk(event, None)]:
                        yield _sse(c)
            elif event.reason == "error":
                yield _sse(failed(event).body())
            else:
                tail = pieces(splitter.flush()) if splitter and whole is None else []
                for last in whole("".join(held), event) if whole is not None else [*tail, chunk(None, event.reason)]:
                    yield _sse(last)
                if gen.include_usage:
                    yield _sse({**chunk(None, None), "choices": [], "usage": _usage(event)})
                yield _sse("[DONE]")

    return streaming(run, events(), "text/event-stream")


def streaming(run: Run, body: AsyncIterator[str], media_type: str) -> StreamingResponse:
    """A streamed reply; its job ends as soon as the stream does, also when the client goes away first."""

    async def guarded():
        try:
            async for part in body:
                yield part
        finally:
            run.job.cancelled.set()  # the client went away (or the stream ended): free the slot now

    return StreamingResponse(guarded(), media_type=media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- routes --------------------------------------------------------------------------------------------


def _state(request: Request) -> ServeState:
    return request.app.state.serve


async def served(request: Request, name, keep_alive: float | None = None) -> ServeState:
    """The model a request is for: the one model served, whatever `name` says; or, serving the store, the model
    `name` names, loaded first if it is not (and held until the reply ends)."""
    pool = request.app.state.pool
    if pool is None:
        return request.app.state.serve
    return await pool.lease(request.scope, name, keep_alive)


def loaded_states(request: Request) -> list[ServeState]:
    """The models in memory: the one served, or the store's that are loaded."""
    pool = request.app.state.pool
    return [request.app.state.serve] if pool is None else [h.state for h in pool.loaded()]


def render_chat(state: ServeState, req: schemas.ChatRequest) -> str:
    messages = list(req.messages)
    generating(state)
    think = state.think if req.think is None else req.think
    try:
        prompt = state.engine.render_chat(messages, tools=list(req.tools) or None, think=think)
        if req.tools and prompt == state.engine.render_chat(messages):
            raise bad_request("this model's chat template does not show it the tools: it cannot call functions", "tools",
                              "unsupported_parameter")
    except EdgeError as exc:
        raise bad_request(str(exc), "messages") from None
    return prompt


def prepare_chat(state: ServeState, req: schemas.ChatRequest) -> Prepared:
    """The chat's prompt through the model's template, tokenized and checked, with the grammar a forced tool
    call or the output format needs. Runs in a worker thread."""
    forced = req.tool_choice not in (None, "auto")
    call = grammar.tool_call_gbnf(req.tools, None if req.tool_choice == "required" else req.tool_choice) if forced else None
    prompt = render_chat(state, req)
    if req.images:
        prepared = prepare_media(state, prompt, req.images, req.gen, "messages", call)
    else:
        prepared = prepare_prompt(state, prompt, req.gen, "messages", call)
    prepared.inside = opened_in(prompt) if state.thinks else None
    return prepared


async def chat_completions(request: Request):
    data = await read_json(request)
    req = schemas.chat_request(data)
    state = await served(request, data.get("model"))
    prepared = await run_in_threadpool(prepare_chat, state, req)
    run = Run(state, prepared, req.gen)
    rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.model_id

    def message(text: str, done: Finished) -> tuple[dict, str]:
        """The assistant message and finish reason for a whole reply."""
        reasoning, text = prepared.split(text)
        thought = {"reasoning_content": reasoning} if reasoning is not None else {}
        content, calls = parse_tool_calls(text, req.tools) if req.tools else (text, [])
        if not calls:
            return {"role": "assistant", "content": text, **thought}, done.reason
        return {"role": "assistant", "content": content, **thought, "tool_calls": calls}, "tool_calls"

    if req.gen.stream:
        def chunk(text: str | None, finish: str | None, delta: dict | None = None) -> dict:
            delta = delta if delta is not None else {"content": text} if text is not None else {}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        def whole(text: str, done: Finished) -> list[dict]:
            msg, finish = message(text, done)
            out = [chunk(None, None, {"reasoning_content": msg["reasoning_content"]})] if msg.get("reasoning_content") else []
            out += [chunk(msg["content"], None)] if msg["content"] else []
            if "tool_calls" in msg:
                out.append(chunk(None, None, {"tool_calls": [{"index": i, **c} for i, c in enumerate(msg["tool_calls"])]}))
            return out + [chunk(None, finish)]

        return _stream(run, req.gen, chunk, chunk(None, None, {"role": "assistant", "content": ""}), whole if req.tools else None,
                       prepared.splitter())
    reply = await run.collect(request)
    if reply is None:
        return Response(status_code=CLIENT_GONE)
    text, done = reply
    msg, finish = message(text, done)
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(done),
    })


async def completions(request: Request):
    data = await read_json(request)
    req = schemas.completion_request(data)
    state = await served(request, data.get("model"))
    prepared = await run_in_threadpool(prepare_prompt, state, req.prompt, req.gen, "prompt")
    run = Run(state, prepared, req.gen)
    rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), state.model_id

    def body(text: str, finish: str | None) -> dict:
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    if req.gen.stream:
        return _stream(run, req.gen, lambda text, finish: body(text or "", finish), None)
    reply = await run.collect(request)
    if reply is None:
        return Response(status_code=CLIENT_GONE)
    text, done = reply
    return JSONResponse({**body(text, done.reason), "usage": _usage(done)})


async def models(request: Request):
    pool = request.app.state.pool
    if pool is not None:
        loaded = {h.key[0] for h in pool.loaded()}
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": request.app.state.created,
                                                         "owned_by": "edgellm", "meta": {"loaded": name in loaded}} for name in pool.names()]})
    state = _state(request)
    return JSONResponse({"object": "list", "data": [{
        "id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgellm",
        "context_length": state.n_ctx_slot,
        "meta": {"slots": state.n_slots, "n_ctx_per_slot": state.n_ctx_slot, "n_ctx_total": state.n_ctx_slot * state.n_slots,
                 "plan": state.plan},
    }]})


def _slots(request: Request) -> tuple[int, int, int, str | None]:
    """Slots, busy slots and waiting requests over the models in memory, and a scheduler's failure if one failed."""
    schedulers = [state.scheduler for state in loaded_states(request)]
    error = next((s.error for s in schedulers if s.error), None)
    return sum(len(s.slots) for s in schedulers), sum(s.busy for s in schedulers), sum(s.queued for s in schedulers), error


async def health(request: Request):
    slots, busy, queued, error = _slots(request)
    body = {"status": "error" if error else "ok", "slots_idle": slots - busy, "slots_processing": busy, "queue": queued}
    return JSONResponse(body, status_code=503 if error else 200)


async def metrics(request: Request):
    slots, busy, queued, _ = _slots(request)
    threads = max((state.engine.info.n_threads for state in loaded_states(request)), default=0)
    return PlainTextResponse(request.app.state.metrics.render(slots, busy, queued, threads), media_type="text/plain; version=0.0.4")


# --- errors, key and counting --------------------------------------------------------------------------


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request.app.state.dialects, request.url.path, exc)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = {404: f"no such endpoint: {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    err = ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), headers=dict(exc.headers or {}))
    return await _api_error(request, err)


class KeyAndCount:
    """ASGI middleware: counts every answer by endpoint and status, and asks for the API key when one is set."""

    def __init__(self, app, metrics: Metrics, api_key: str | None, dialects: tuple[Dialect, ...] = ()):
        self.app = app
        self.metrics = metrics
        self.api_key = api_key
        self.dialects = dialects

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.request(path, message["status"])
            await send(message)

        if self.api_key is not None and path not in OPEN_PATHS and not self._authorized(scope):
            err = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await error_response(self.dialects, path, err)(scope, receive, counting_send)
        await self.app(scope, receive, counting_send)

    def _authorized(self, scope) -> bool:
        """The key as OpenAI's and Ollama's clients send it (a bearer token) or as Anthropic's do (x-api-key)."""
        headers = dict(scope["headers"])
        key = self.api_key.encode()
        bearer = hmac.compare_digest(headers.get(b"authorization", b""), b"Bearer " + key)
        return hmac.compare_digest(headers.get(b"x-api-key", b""), key) or bearer


def build_app(state: ServeState | None, counts: Metrics, cors: tuple[str, ...] = (), dialects: tuple[Dialect, ...] = (), pool=None,
              api_key: str | None = None, inner: tuple[Middleware, ...] = ()) -> Starlette:
    """The app for one model (`state`), or for the store's (`pool`, a ModelPool, whose middleware comes in `inner`)."""
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *(r for d in dialects for r in d.routes),
    ]
    middleware = []
    if cors:  # outermost, so preflight requests and error answers carry the CORS headers too
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version"]))
    middleware.append(Middleware(KeyAndCount, metrics=counts, api_key=api_key, dialects=dialects))
    middleware.extend(inner)
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={ApiError: _api_error, HTTPException: _http_error})
    app.state.serve = state
    app.state.pool = pool
    app.state.metrics = counts
    app.state.created = int(time.time())
    app.state.dialects = dialects
    return app
