"""Ollama's API on the port that serves OpenAI's: /api/chat and /api/generate (NDJSON streams unless
`"stream": false`), /api/embed and /api/embeddings, /api/tags, /api/show, /api/ps and /api/version, so what speaks to Ollama (Open WebUI,
Continue, Obsidian and editor plug-ins, the `ollama` package) speaks to edgellm.

A chat becomes the ChatRequest the OpenAI route runs (a raw /api/generate, the bare prompt): the same chat
template, slots, sampling, JSON grammar and tool calls. Errors are Ollama's `{"error": "..."}`.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__
from . import ollama_requests as parse
from ..engine.reasoning import CONTENT, REASONING, Part
from ..store.models import resolve_model
from .api import CLIENT_GONE, Dialect, Prepared, Run, ServeState, prepare_chat, prepare_media, prepare_prompt, read_json, served, streaming
from .embeddings import ollama_embed, ollama_embeddings
from .errors import ApiError
from .names import ServedModel, served_model, slug
from .scheduler import Finished
from .tools import parse_tool_calls

# the Ollama release whose API this follows, as /api/version reports it (clients check it for features)
OLLAMA_VERSION = "0.12.0"
LOADED_FOR = timedelta(days=365 * 100)  # /api/ps: the model stays loaded as long as the server runs


def _state(request: Request) -> ServeState:
    return request.app.state.serve


def _model(state: ServeState) -> ServedModel:
    return served_model(state.model_id, state.plan.get("name", ""), state.plan.get("level", ""), state.engine.info.path)


def _now() -> str:
    """A timestamp as Ollama writes them (RFC 3339, UTC)."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _details(m: ServedModel) -> dict:
    return {"parent_model": "", "format": "gguf", "family": m.family, "families": [m.family], "parameter_size": m.parameter_size(),
            "quantization_level": m.level}


def _final(done: Finished, started: float) -> dict:
    """What the last object of a reply adds: why it ended, and Ollama's counts and durations (nanoseconds)."""
    return {"done": True, "done_reason": done.reason, "total_duration": _ns(time.perf_counter() - started), "load_duration": 0,
            "prompt_eval_count": done.prompt_tokens, "prompt_eval_duration": _ns(done.prompt_s),
            "eval_count": done.completion_tokens, "eval_duration": _ns(done.gen_s)}


def _tool_calls(text: str, tools: tuple[dict, ...]) -> tuple[str, list[dict]]:
    """The reply's text and its calls as Ollama writes them (arguments as an object)."""
    content, calls = parse_tool_calls(text, tools) if tools else (text, [])
    return content or "", [{"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}} for c in calls]


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


async def _reply(request: Request, run: Run, stream: bool, head: dict, part, last, tools: tuple[dict, ...] = (), splitter=None):
    """The reply as Ollama sends it: `head | part(text, kind)` objects, one per line, then `head | last(text, done)`;
    or, not streamed, that last object with the whole text. With tools the text is held until the end (a call
    is only known once complete) and goes out with the calls. With `splitter`, a thinking model's reasoning
    goes out as parts of its own kind."""
    if not stream:
        reply = await run.collect(request)
        if reply is None:
            return Response(status_code=CLIENT_GONE)
        text, done = reply
        return JSONResponse({**head, "created_at": _now(), **last(text, done)})

    async def lines():
        held: list[str] = []
        async for event in run.pieces():
            if isinstance(event, str):
                if tools:
                    held.append(event)
                    continue
                for p in splitter.push(event) if splitter else [Part(CONTENT, event)]:
                    yield _line({**head, "created_at": _now(), **part(p.text, p.kind), "done": False})
            elif event.reason == "error":
                yield _line({"error": event.message or "the reply failed"})
            else:
                for p in splitter.flush() if splitter and not tools else []:
                    yield _line({**head, "created_at": _now(), **part(p.text, p.kind), "done": False})
                yield _line({**head, "created_at": _now(), **last("".join(held), event)})

    return streaming(run, lines(), "application/x-ndjson")


# --- generating ----------------------------------------------------------------------------------------


def _name(request: Request, raw) -> str:
    """The model's name as the client gave it, once known to be one this server has (else a 404)."""
    pool = request.app.state.pool
    if pool is None:
        return _model(_state(request)).resolve(raw)
    pool.resolve(raw)
    return raw


async def _request(request: Request, read):
    """The model, when the request came, the model's name as the client gave it, the request `read` makes and
    its keep_alive (seconds; None: the server's)."""
    started = time.perf_counter()
    data = await read_json(request)
    name = _name(request, data.get("model"))
    req = read(data, name)
    keep = parse.keep_alive(data)
    state = await served(request, name, keep)
    parse.check_think(data, name, state.thinks)
    return state, started, name, req, keep


def _load_reason(keep_alive: float | None) -> str:
    return "unload" if keep_alive == 0 else "load"


async def chat(request: Request):
    state, started, name, req, keep = await _request(request, parse.chat_request)
    head = {"model": name}
    if not req.messages:  # Ollama's way to load a model (or, with keep_alive 0, to unload it)
        return JSONResponse({**head, "created_at": _now(), "message": {"role": "assistant", "content": ""}, "done": True,
                             "done_reason": _load_reason(keep)})
    prepared = await run_in_threadpool(prepare_chat, state, req)
    run = Run(state, prepared, req.gen)

    def part(text: str, kind: str) -> dict:
        return {"message": {"role": "assistant", **({"content": "", "thinking": text} if kind == REASONING else {"content": text})}}

    def last(text: str, done: Finished) -> dict:
        whole = req.tools or not req.gen.stream
        reasoning, text = prepared.split(text)
        content, calls = _tool_calls(text, req.tools)
        message = {"role": "assistant", "content": content if whole else ""}
        if reasoning and whole:
            message["thinking"] = reasoning
        if calls:
            message["tool_calls"] = calls
        return {"message": message, **_final(done, started)}

    return await _reply(request, run, req.gen.stream, head, part, last, req.tools, prepared.splitter())


async def generate(request: Request):
    state, started, name, req, keep = await _request(request, parse.generate_request)
    head = {"model": name}
    if req.prompt is None:
        return JSONResponse({**head, "created_at": _now(), "response": "", "done": True, "done_reason": _load_reason(keep)})
    prepared: Prepared
    if req.raw and req.chat.images:
        prepared = await run_in_threadpool(prepare_media, state, req.prompt, req.chat.images, req.chat.gen, "prompt")
    elif req.raw:
        prepared = await run_in_threadpool(prepare_prompt, state, req.prompt, req.chat.gen, "prompt")
    else:
        prepared = await run_in_threadpool(prepare_chat, state, req.chat)
    run = Run(state, prepared, req.chat.gen)

    def part(text: str, kind: str) -> dict:
        return {"response": "", "thinking": text} if kind == REASONING else {"response": text}

    def last(text: str, done: Finished) -> dict:
        if req.chat.gen.stream:
            return {"response": "", **_final(done, started)}
        reasoning, text = prepared.split(text)
        return {"response": text, **({"thinking": reasoning} if reasoning else {}), **_final(done, started)}

    return await _reply(request, run, req.chat.gen.stream, head, part, last, splitter=prepared.splitter())


async def embed(request: Request):
    data = await read_json(request)
    name = _name(request, data.get("model"))
    return await ollama_embed(await served(request, name, parse.keep_alive(data)), name, data)


async def embeddings(request: Request):
    data = await read_json(request)
    name = _name(request, data.get("model"))
    return await ollama_embeddings(await served(request, name, parse.keep_alive(data)), data)


# --- the model ------------------------------------------------------------------------------------------


def _stored(name: str) -> ServedModel:
    """A store entry as Ollama's listings describe it: its best level (or the one a `name:LEVEL` names)."""
    ref = resolve_model(name)
    return served_model(name, ref.name, ref.files[0].level, ref.files[0].path)


def _listed(request: Request) -> list[ServedModel]:
    pool = request.app.state.pool
    return [_model(_state(request))] if pool is None else [_stored(name) for name in pool.names()]


async def tags(request: Request):
    models = await run_in_threadpool(_listed, request)
    return JSONResponse({"models": [{"name": m.names[0], "model": m.names[0], "modified_at": _iso(m.modified), "size": m.size,
                                     "digest": m.digest, "details": _details(m)} for m in models]})


async def show(request: Request):
    data = await read_json(request)
    name = _name(request, data.get("model", data.get("name")))
    pool = request.app.state.pool
    if pool is None:
        state = _state(request)
        m = _model(state)
        takes_tools = await run_in_threadpool(_takes_tools, state)
    else:  # described from its file, without loading it
        m = await run_in_threadpool(_stored, pool.resolve(name)[0])
        takes_tools = "tools" in m.chat_template
    verbose = parse.show_verbose(data)
    info = {k: v for k, v in m.metadata.items() if verbose or not k.startswith("tokenizer.")}
    info["general.parameter_count"] = m.n_params
    capabilities = ["completion"] + (["tools"] if takes_tools else [])
    return JSONResponse({
        "modelfile": f"# served by edgellm {__version__}\nFROM {m.path}\n",
        "parameters": "", "template": m.chat_template, "details": _details(m), "model_info": info,
        "capabilities": capabilities, "modified_at": _iso(m.modified),
    })


def _takes_tools(state: ServeState) -> bool:
    """Whether the chat template shows the model the functions it may call."""
    ask = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "description": "", "parameters": {"type": "object"}}}
    try:
        return state.engine.render_chat(ask, tools=[tool]) != state.engine.render_chat(ask)
    except Exception:  # a template that fails on tools does not take them
        return False


async def ps(request: Request):
    pool = request.app.state.pool
    forever = time.time() + LOADED_FOR.total_seconds()
    if pool is None:
        loaded = [(_state(request), forever)]  # (the model, when it expires, the level its name pinned)
    else:  # a model in use expires its keep-alive after its last reply; one kept for ever shows as the one-model server's
        loaded = [(h.state, h.expires_at if h.users == 0 and h.expires_at < forever else None, h.key[1]) for h in pool.loaded()]
    out = []
    for state, expires, *pinned in loaded:
        m = _model(state)
        name = f"{slug(state.model_id)}:{pinned[0]}" if pinned and pinned[0] else m.names[0]
        memory = state.plan.get("memory", {})
        vram = int(memory.get("vram", 0))
        until = expires if expires is not None else time.time() + min(pool.keep_alive, LOADED_FOR.total_seconds())
        out.append({"name": name, "model": name, "size": int(memory.get("ram", 0)) + vram, "size_vram": vram, "digest": m.digest,
                    "details": _details(m), "expires_at": _iso(until), "context_length": state.n_ctx_slot})
    return JSONResponse({"models": out})


async def version(request: Request):
    return JSONResponse({"version": OLLAMA_VERSION, "edgellm": __version__})


async def running(request: Request):
    return PlainTextResponse("Ollama is running")


def error_body(err: ApiError) -> dict:
    return {"error": err.message}


DIALECT = Dialect(
    prefixes=("/api/",),
    routes=(
        Route("/", running, methods=["GET", "HEAD"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/embeddings", embeddings, methods=["POST"]),
    ),
    error_body=error_body,
)
