"""OpenAI's Responses API on the same port: POST /v1/responses, answered whole or as server-sent events in the
documented order (response.created, response.in_progress, then per output item its added / delta / done
events, then response.completed or response.incomplete). Errors keep OpenAI's shape.

A request becomes the ChatRequest /v1/chat/completions runs: the same template, slots, sampling, JSON grammar and
tool calls, which come back as function_call items. Nothing is stored (`store` is always false).
"""

from __future__ import annotations

import time
import uuid
from typing import Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..engine.reasoning import CONTENT, REASONING, Part
from .api import CLIENT_GONE, Dialect, Prepared, Run, failed, prepare_chat, read_json, served, streaming, typed_sse
from .errors import ApiError
from .responses_requests import ResponsesRequest, responses_request
from .scheduler import Finished
from .tools import parse_tool_calls


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, text: str | None, status: str) -> dict:
    content = [] if text is None else [_text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def _reasoning(item_id: str, text: str | None, status: str) -> dict:
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content}


def _items(text: str, req: ResponsesRequest, prepared: Prepared, status: str) -> list[dict]:
    """The reply as output items: a thinking model's reasoning, its text as a message, then a function_call item per call."""
    reasoning, text = prepared.split(text)
    content, calls = parse_tool_calls(text, req.chat.tools) if req.chat.tools else (text, [])
    items = [_reasoning(_id("rs"), reasoning, status)] if reasoning is not None else []
    items += [_message(_id("msg"), content or "", status)] if content or not calls else []
    return items + [{"id": _id("fc"), "type": "function_call", "status": "completed", "call_id": c["id"], "name": c["function"]["name"],
                     "arguments": c["function"]["arguments"]} for c in calls]


def _usage(done: Finished) -> dict:
    return {"input_tokens": done.prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": done.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": done.prompt_tokens + done.completion_tokens}


class Reply:
    """The response object of one request, as it stands: in progress, then finished one way or another."""

    def __init__(self, req: ResponsesRequest):
        self.head = {
            "id": _id("resp"), "object": "response", "created_at": int(time.time()), "model": req.model, "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens, "previous_response_id": None, "store": False, "truncation": "disabled",
            "reasoning": {"effort": None, "summary": None}, "user": None, "background": False, **req.echo,
        }

    def body(self, status: str, output: list[dict], done: Finished | None = None, error: dict | None = None) -> dict:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {**self.head, "status": status, "completed_at": int(time.time()) if done else None, "error": error,
                "incomplete_details": incomplete, "output": output, "usage": _usage(done) if done else None}


def _status(done: Finished) -> str:
    return "incomplete" if done.reason == "length" else "completed"


class Events:
    """Server-sent events, each with the next sequence number."""

    def __init__(self):
        self.n = 0

    def __call__(self, kind: str, **data) -> str:
        event = typed_sse(kind, {**data, "sequence_number": self.n})
        self.n += 1
        return event


class Streamed:
    """An output item whose text streams: a message or a thinking model's reasoning."""

    def __init__(self, ev: Events, kind: str, index: int):
        self.ev, self.kind, self.index = ev, kind, index
        self.id = _id("rs" if kind == REASONING else "msg")
        self.text: list[str] = []
        self.at = {"item_id": self.id, "output_index": index, "content_index": 0}

    def item(self, text: str | None, status: str) -> dict:
        return (_reasoning if self.kind == REASONING else _message)(self.id, text, status)

    def opened(self) -> Iterator[str]:
        yield self.ev("response.output_item.added", output_index=self.index, item=self.item(None, "in_progress"))
        if self.kind != REASONING:
            yield self.ev("response.content_part.added", **self.at, part=_text_part(""))

    def delta(self, text: str) -> str:
        self.text.append(text)
        if self.kind == REASONING:
            return self.ev("response.reasoning_text.delta", **self.at, delta=text)
        return self.ev("response.output_text.delta", **self.at, delta=text, logprobs=[])

    def closed(self, status: str) -> Iterator[str]:
        text = "".join(self.text)
        if self.kind == REASONING:
            yield self.ev("response.reasoning_text.done", **self.at, text=text)
        else:
            yield self.ev("response.output_text.done", **self.at, text=text, logprobs=[])
            yield self.ev("response.content_part.done", **self.at, part=_text_part(text))
        yield self.ev("response.output_item.done", output_index=self.index, item=self.item(text, status))


def _item_events(ev: Events, index: int, item: dict) -> Iterator[str]:
    """A whole output item as its added event, its content in one delta and its done events."""
    if item["type"] in ("message", "reasoning"):
        streamed = Streamed(ev, REASONING if item["type"] == "reasoning" else CONTENT, index)
        streamed.id = streamed.at["item_id"] = item["id"]
        yield from streamed.opened()
        text = item["content"][0]["text"]
        if text:
            yield streamed.delta(text)
        yield from streamed.closed(item["status"])
        return
    at = {"item_id": item["id"], "output_index": index}
    yield ev("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "arguments": ""})
    yield ev("response.function_call_arguments.delta", **at, delta=item["arguments"])
    yield ev("response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"])
    yield ev("response.output_item.done", output_index=index, item=item)


async def responses(request: Request):
    req = responses_request(await read_json(request))
    state = await served(request, req.model)
    prepared = await run_in_threadpool(prepare_chat, state, req.chat)
    run = Run(state, prepared, req.chat.gen)
    reply = Reply(req)

    if not req.chat.gen.stream:
        got = await run.collect(request)
        if got is None:
            return Response(status_code=CLIENT_GONE)
        text, done = got
        return JSONResponse(reply.body(_status(done), _items(text, req, prepared, _status(done)), done))

    async def events():
        ev = Events()
        yield ev("response.created", response=reply.body("in_progress", []))
        yield ev("response.in_progress", response=reply.body("in_progress", []))
        splitter = prepared.splitter()
        items: list[Streamed] = []
        if not req.chat.tools and splitter is None:  # the text streams as it comes; with tools it is held: a call is known once complete
            items.append(Streamed(ev, CONTENT, 0))
            for e in items[-1].opened():
                yield e
        held: list[str] = []
        async for event in run.pieces():
            if isinstance(event, str):
                held.append(event)
                if req.chat.tools:
                    continue
                for part in splitter.push(event) if splitter else [Part(CONTENT, event)]:
                    for e in _streamed(ev, items, part, "completed"):  # a reasoning item closed mid-reply is complete
                        yield e
            elif event.reason == "error":
                error = {"code": "server_error", "message": failed(event).message}
                yield ev("response.failed", response=reply.body("failed", [], error=error))
            else:
                status, text = _status(event), "".join(held)
                if req.chat.tools:
                    output = _items(text, req, prepared, status)
                    for i, item in enumerate(output):
                        for e in _item_events(ev, i, item):
                            yield e
                else:
                    for part in splitter.flush() if splitter else []:
                        for e in _streamed(ev, items, part, status):
                            yield e
                    if not items or items[-1].kind != CONTENT:  # a reply that was all reasoning still has its (empty) message
                        for e in _streamed(ev, items, Part(CONTENT, ""), status):
                            yield e
                    for e in items[-1].closed(status):
                        yield e
                    output = [item.item("".join(item.text), status) for item in items]
                kind = "response.completed" if status == "completed" else "response.incomplete"
                yield ev(kind, response=reply.body(status, output, event))

    return streaming(run, events(), "text/event-stream")


def _streamed(ev: Events, items: list[Streamed], part: Part, status: str) -> Iterator[str]:
    """The events one part of the reply makes: a new item when its kind changes (the one before closed), its delta."""
    if not items or items[-1].kind != part.kind:
        if items:
            yield from items[-1].closed(status)
        items.append(Streamed(ev, part.kind, len(items)))
        yield from items[-1].opened()
    if part.text:
        yield items[-1].delta(part.text)


DIALECT = Dialect(prefixes=("/v1/responses",), routes=(Route("/v1/responses", responses, methods=["POST"]),), error_body=ApiError.body)
