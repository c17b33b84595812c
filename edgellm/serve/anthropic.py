"""Anthropic's Messages API on the same port: POST /v1/messages (plain, or server-sent events in Anthropic's
order) and /v1/messages/count_tokens, so coding agents and other apps built on the `anthropic` package talk to
edgellm. The key is accepted as `x-api-key` too, and errors are Anthropic's
`{"type": "error", "error": {"type", "message"}}`.

A request becomes the ChatRequest the OpenAI route runs: the same template, slots, sampling and tool calls.
"""

from __future__ import annotations

import json
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import anthropic_requests as parse
from ..engine.reasoning import CONTENT, REASONING, Part
from .api import (
    CLIENT_GONE, Dialect, Prepared, Run, prepare_chat, prepare_media, read_json, render_chat, served, streaming, typed_sse as _event,
)
from .errors import ApiError
from .scheduler import Finished
from .tools import parse_tool_calls

# HTTP status -> Anthropic's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def _blocks(text: str, tools: tuple[dict, ...], prepared: Prepared) -> list[dict]:
    """The reply as content blocks: a thinking model's reasoning, its text, then a tool_use block per call."""
    reasoning, text = prepared.split(text)
    content, calls = parse_tool_calls(text, tools) if tools else (text, [])
    blocks = [_thinking(reasoning)] if reasoning is not None else []
    blocks += [{"type": "text", "text": content}] if content or not calls else []
    return blocks + [{"type": "tool_use", "id": f"toolu_{c['id'].removeprefix('call_')}", "name": c["function"]["name"],
                      "input": json.loads(c["function"]["arguments"])} for c in calls]


def _thinking(text: str) -> dict:
    return {"type": "thinking", "thinking": text, "signature": ""}  # nothing is signed here: the turn is sent back as it was


# block type -> (its start, the delta its text goes out in)
STREAMED = {"text": ({"type": "text", "text": ""}, "text_delta", "text"), "thinking": (_thinking(""), "thinking_delta", "thinking")}
PART_BLOCKS = {REASONING: "thinking", CONTENT: "text"}


def _stop(done: Finished, blocks: list[dict], max_tokens: int) -> dict:
    if any(b["type"] == "tool_use" for b in blocks):
        reason = "tool_use"
    elif done.reason == "length":
        reason = "max_tokens" if done.completion_tokens >= max_tokens else "model_context_window_exceeded"
    else:
        reason = "stop_sequence" if done.stop is not None else "end_turn"
    return {"stop_reason": reason, "stop_sequence": done.stop}


def _block_events(index: int, block: dict) -> list[str]:
    """A whole content block as its start, one delta and its stop."""
    if block["type"] in STREAMED:
        start, kind, field = STREAMED[block["type"]]
        delta = {"type": kind, field: block[field]}
    else:
        start, delta = {**block, "input": {}}, {"type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)}
    return [_event("content_block_start", {"index": index, "content_block": start}), _event("content_block_delta", {"index": index, "delta": delta}),
            _event("content_block_stop", {"index": index})]


async def messages(request: Request):
    data = await read_json(request)
    req = parse.messages_request(data)
    state = await served(request, req.model)
    parse.check_thinking(req.thinking, state.thinks)
    chat = req.chat
    prepared = await run_in_threadpool(prepare_chat, state, chat)
    run = Run(state, prepared, chat.gen)
    head = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": req.model}
    n_prompt = len(prepared.tokens)

    if not chat.gen.stream:
        reply = await run.collect(request)
        if reply is None:
            return Response(status_code=CLIENT_GONE)
        text, done = reply
        blocks = _blocks(text, chat.tools, prepared)
        return JSONResponse({**head, "content": blocks, **_stop(done, blocks, req.max_tokens),
                             "usage": {"input_tokens": done.prompt_tokens, "output_tokens": done.completion_tokens}})

    async def events():
        start = {**head, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": n_prompt, "output_tokens": 0}}
        yield _event("message_start", {"message": start})
        splitter = prepared.splitter()
        opened: list[str] = []  # the streamed blocks' types, in order; the last is open
        if not chat.tools and splitter is None:  # the text streams as it comes; with tools it is held: a call is known once complete
            opened.append("text")
            yield _event("content_block_start", {"index": 0, "content_block": STREAMED["text"][0]})
        yield _event("ping", {})
        held: list[str] = []
        async for event in run.pieces():
            if isinstance(event, str):
                if chat.tools:
                    held.append(event)
                    continue
                for part in splitter.push(event) if splitter else [Part(CONTENT, event)]:
                    for e in _streamed(opened, part):
                        yield e
            elif event.reason == "error":
                yield _event("error", {"error": {"type": "api_error", "message": event.message or "the reply failed"}})
            else:
                blocks = _blocks("".join(held), chat.tools, prepared) if chat.tools else []
                if chat.tools:
                    for i, block in enumerate(blocks):
                        for e in _block_events(i, block):
                            yield e
                else:
                    for part in (splitter.flush() if splitter else []) + ([] if opened else [Part(CONTENT, "")]):
                        for e in _streamed(opened, part):
                            yield e
                    yield _event("content_block_stop", {"index": len(opened) - 1})
                usage = {"input_tokens": event.prompt_tokens, "output_tokens": event.completion_tokens}
                yield _event("message_delta", {"delta": _stop(event, blocks, req.max_tokens), "usage": usage})
                yield _event("message_stop", {})

    return streaming(run, events(), "text/event-stream")


def _streamed(opened: list[str], part: Part) -> list[str]:
    """The events one part of the reply makes: a new block when its kind changes (the one before stopped), its delta."""
    kind = PART_BLOCKS[part.kind]
    out = []
    if not opened or opened[-1] != kind:
        if opened:
            out.append(_event("content_block_stop", {"index": len(opened) - 1}))
        opened.append(kind)
        out.append(_event("content_block_start", {"index": len(opened) - 1, "content_block": STREAMED[kind][0]}))
    if part.text:
        _, delta, field = STREAMED[kind]
        out.append(_event("content_block_delta", {"index": len(opened) - 1, "delta": {"type": delta, field: part.text}}))
    return out


async def count_tokens(request: Request):
    data = await read_json(request)
    chat = parse.count_request(data)
    state = await served(request, data.get("model"))
    parse.check_thinking(parse.wants_thinking(data.get("thinking")), state.thinks)

    def count() -> int:
        if not chat.images:
            return len(state.engine.tokenize(render_chat(state, chat)))
        media = prepare_media(state, render_chat(state, chat), chat.images, chat.gen, "messages").media
        media.close()
        return len(media.keys)  # each picture counts the positions it takes

    return JSONResponse({"input_tokens": await run_in_threadpool(count)})


def error_body(err: ApiError) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(err.status, "api_error"), "message": err.message}}


DIALECT = Dialect(
    prefixes=("/v1/messages",),
    routes=(
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    ),
    error_body=error_body,
)
