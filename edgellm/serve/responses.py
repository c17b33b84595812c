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

from .api import CLIENT_GONE, Dialect, Run, failed, prepare_chat, read_json, served, streaming, typed_sse
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


def _items(text: str, req: ResponsesRequest, status: str) -> list[dict]:
    """The reply as output items: its text as a message, then a function_call item per call."""
    content, calls = parse_tool_calls(text, req.chat.tools) if req.chat.tools else (text, [])
    items = [_message(_id("msg"), content or "", status)] if content or not calls else []
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


def _item_events(ev: Events, index: int, item: dict) -> Iterator[str]:
    """A whole output item as its added event, its content in one delta and its done events."""
    if item["type"] == "message":
        text = item["content"][0]["text"]
        at = {"item_id": item["id"], "output_index": index, "content_index": 0}
        yield ev("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []})
        yield ev("response.content_part.added", **at, part=_text_part(""))
        if text:
            yield ev("response.output_text.delta", **at, delta=text, logprobs=[])
        yield ev("response.output_text.done", **at, text=text, logprobs=[])
        yield ev("response.content_part.done", **at, part=_text_part(text))
    else:
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
        return JSONResponse(reply.body(_status(done), _items(text, req, _status(done)), done))

    async def events():
        ev = Events()
        yield ev("response.created", response=reply.body("in_progress", []))
        yield ev("response.in_progress", response=reply.body("in_progress", []))
        item_id = _id("msg")
        at = {"item_id": item_id, "output_index": 0, "content_index": 0}
        if not req.chat.tools:  # the text streams as it comes; with tools it is held: a call is known once complete
            yield ev("response.output_item.added", output_index=0, item=_message(item_id, None, "in_progress"))
            yield ev("response.content_part.added", **at, part=_text_part(""))
        held: list[str] = []
        async for event in run.pieces():
            if isinstance(event, str):
                held.append(event)
                if not req.chat.tools:
                    yield ev("response.output_text.delta", **at, delta=event, logprobs=[])
            elif event.reason == "error":
                error = {"code": "server_error", "message": failed(event).message}
                yield ev("response.failed", response=reply.body("failed", [], error=error))
            else:
                status, text = _status(event), "".join(held)
                if req.chat.tools:
                    output = _items(text, req, status)
                    for i, item in enumerate(output):
                        for e in _item_events(ev, i, item):
                            yield e
                else:
                    output = [_message(item_id, text, status)]
                    yield ev("response.output_text.done", **at, text=text, logprobs=[])
                    yield ev("response.content_part.done", **at, part=_text_part(text))
                    yield ev("response.output_item.done", output_index=0, item=output[0])
                kind = "response.completed" if status == "completed" else "response.incomplete"
                yield ev(kind, response=reply.body(status, output, event))

    return streaming(run, events(), "text/event-stream")


DIALECT = Dialect(prefixes=("/v1/responses",), routes=(Route("/v1/responses", responses, methods=["POST"]),), error_body=ApiError.body)
