"""OpenAI's Responses requests, read from untrusted JSON into the ChatRequest the server runs: `input` as a
string or a list of items (messages with text parts, earlier function_call and function_call_output items),
`instructions`, `max_output_tokens`, temperature and top_p, function tools in the Responses' flat shape,
`tool_choice` and `text.format`. Every field is checked; a failure is a 400 naming it.

This server keeps no responses: `store` is answered false and `previous_response_id` (and what needs stored
state: `conversation`, `background`, stored `prompt`s) is refused. Earlier reasoning items are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..engine.sampling import Sampling
from .errors import bad_request
from ..engine.vision import MARKER
from .schemas import INT32_MAX, MAX_MESSAGES, ChatRequest, Fields, Generation, ImageRef, function_tools, gather_images, text_content

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_PARTS = ("input_text", "output_text")  # what a message's content holds (the assistant's earlier replies: output_text)
DROPPED_ITEMS = ("reasoning",)  # a thinking model's earlier thoughts: nothing to replay here
STATEFUL = {  # fields that need responses kept on the server -> why they are refused
    "previous_response_id": "this server keeps no responses: send the whole conversation in 'input' instead",
    "conversation": "this server keeps no conversations: send the whole conversation in 'input' instead",
    "prompt": "this server keeps no stored prompts: send the text in 'instructions' and 'input'",
}


@dataclass(frozen=True)
class ResponsesRequest:
    model: str  # as the client named it
    chat: ChatRequest
    instructions: str | None
    max_output_tokens: int | None
    echo: dict  # the request's settings as the response object repeats them


def _parts(content, where: str, images: list[ImageRef] | None = None) -> str:
    """A message's content: a string, or a list of input_text / output_text parts joined; where `images` is given,
    input_image parts too (each a MARKER in the text, its ImageRef added to `images`)."""
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if images is not None and kind == "input_image":
                url = part.get("image_url")
                if not isinstance(url, str) or not url:
                    raise bad_request(f"{where}[{i}].image_url must be a data: or http(s) URL (file_id is not supported)", f"{where}[{i}].image_url")
                images.append(ImageRef(f"{where}[{i}].image_url", url, True))
                parts.append(MARKER)
                continue
            if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
                allowed = "input_text, input_image and output_text" if images is not None else "input_text and output_text"
                raise bad_request(f"{where}[{i}]: only {allowed} parts are supported, not {kind!r}", f"{where}[{i}]")
            parts.append(part["text"])
        return "".join(parts)
    return text_content(content, where)


def _string(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where}.{name} must be a non-empty string", f"{where}.{name}")
    return value


def _items(raw, instructions: str | None) -> tuple[dict, ...]:
    """The input as chat messages: consecutive function calls join one assistant message, as templates take them."""
    out: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(raw, str):
        return tuple(out + [{"role": "user", "content": raw}])
    if not isinstance(raw, list) or not raw:
        raise bad_request("'input' must be a string or a non-empty list of items", "input")
    if len(raw) > MAX_MESSAGES:
        raise bad_request(f"'input' holds {len(raw)} items; at most {MAX_MESSAGES}", "input")
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            if item.get("role") not in ROLES:
                raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}, not {item.get('role')!r}", f"{where}.role")
            images: list[ImageRef] = []
            content = _parts(item.get("content"), f"{where}.content", images)
            out.append({"role": ROLES[item["role"]], "content": content, **({"images": tuple(images)} if images else {})})
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where), "arguments": _arguments(item.get("arguments"), where)}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": _parts(item.get("output"), f"{where}.output")})
        elif kind in DROPPED_ITEMS:
            continue
        else:
            raise bad_request(f"{where}: items here are message, function_call, function_call_output or reasoning, not {kind!r}", where)
    if not any(m["role"] != "system" for m in out):
        raise bad_request("'input' holds no message to answer", "input")
    return tuple(out)


def _arguments(raw, where: str):
    """A function call's arguments (a JSON string) as the object chat templates expect; other text stays text."""
    if not isinstance(raw, str):
        raise bad_request(f"{where}.arguments must be a string of JSON", f"{where}.arguments")
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _tools(raw, choice) -> tuple[tuple[dict, ...], str | None]:
    """Responses' flat function tools ({"type": "function", "name", "parameters"}) and tool_choice, in the
    nested shape chat completions use, then checked as those are."""
    if raw is not None and isinstance(raw, list):
        nested = []
        for i, tool in enumerate(raw):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
                raise bad_request(f"tools[{i}]: only function tools are supported, not {kind!r}", f"tools[{i}]")
            nested.append({"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}})
        raw = nested or None
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return function_tools(raw, choice)


def _format(raw) -> dict | None:
    """`text.format` as the response_format chat completions take."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("'text' must be an object", "text")
    if raw.get("verbosity") not in (None, "low", "medium", "high"):
        raise bad_request("'text.verbosity' must be low, medium or high", "text.verbosity")
    fmt = raw.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"schema": fmt["schema"]}}
    raise bad_request("'text.format' must be {'type': 'text' | 'json_object'} or {'type': 'json_schema', 'name': ..., 'schema': {...}}",
                      "text.format")


def responses_request(data: dict) -> ResponsesRequest:
    body = Fields(data)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: a string", "model")
    for name, why in STATEFUL.items():
        if data.get(name) is not None:
            raise bad_request(f"'{name}': {why}", name, "unsupported_parameter")
    body.boolean("store", False)  # nothing is kept either way; the response says store: false
    if body.boolean("background", False):
        raise bad_request("'background': this server answers while the client waits (leave it out)", "background", "unsupported_parameter")
    if body.integer("top_logprobs", 0, 0, 20):
        raise bad_request("'top_logprobs' is not supported by this server (leave it out)", "top_logprobs", "unsupported_parameter")
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("'instructions' must be a string", "instructions")
    max_output = body.integer("max_output_tokens", None, 1, INT32_MAX)
    d = Sampling()  # the defaults /v1/chat/completions has: the same request gives the same reply there
    sampling = Sampling(temperature=body.number("temperature", d.temperature), top_p=body.number("top_p", d.top_p), max_tokens=max_output)
    fmt = _format(data.get("text"))
    tools, choice = _tools(data.get("tools"), data.get("tool_choice"))
    if choice not in (None, "auto") and fmt is not None:
        raise bad_request("a 'tool_choice' that forces a call cannot be combined with 'text.format'", "tool_choice")
    parallel = body.boolean("parallel_tool_calls", True)
    gen = Generation(sampling, stream=body.boolean("stream", False), response_format=fmt)
    messages, images = gather_images(_items(data.get("input"), instructions))
    chat = ChatRequest(messages, gen, tools, choice, images=images)
    echo = {
        "temperature": sampling.temperature, "top_p": sampling.top_p, "parallel_tool_calls": parallel,
        "tool_choice": _choice_echo(data.get("tool_choice"), choice), "tools": [{"type": "function", **t["function"], "strict": False} for t in tools],
        "text": {"format": _format_echo(data.get("text"))}, "metadata": data.get("metadata") if isinstance(data.get("metadata"), dict) else {},
    }
    return ResponsesRequest(model, chat, instructions, max_output, echo)


def _choice_echo(raw, choice: str | None):
    if choice is None:
        return "none" if raw == "none" else "auto"
    return choice if choice in ("auto", "required") else {"type": "function", "name": choice}


def _format_echo(text) -> dict:
    fmt = text.get("format") if isinstance(text, dict) else None
    return fmt if isinstance(fmt, dict) else {"type": "text"}
