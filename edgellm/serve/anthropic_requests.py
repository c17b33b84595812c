"""Anthropic's Messages requests, read from untrusted JSON into the ChatRequest the server runs: `system`, turns
of text, tool_use and tool_result blocks, `stop_sequences`, `max_tokens` (required, as Anthropic requires it),
temperature (0 to 1, default 1), top_p, top_k, tools and tool_choice, and `output_config.format` (a JSON
schema the reply follows, through the same grammar as OpenAI's response_format). Every field is checked; a failure is a
400 naming it. Earlier thinking blocks are dropped (templates leave old reasoning out); `thinking` is only for a
model that thinks; image blocks (base64 or URL sources) are taken for a model with a projector, documents refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.sampling import Sampling
from .errors import bad_request
from ..engine.vision import MARKER
from .schemas import (
    INT32_MAX, MAX_MESSAGES, MAX_TOOLS, TOOL_NAME, ChatRequest, Fields, Generation, ImageRef, gather_images, stop_strings,
)

ANTHROPIC_DEFAULT_TEMPERATURE = 1.0
EFFORTS = ("low", "medium", "high", "xhigh", "max")
DROPPED_BLOCKS = ("thinking", "redacted_thinking")  # a thinking model's earlier thoughts: nothing this model reads


@dataclass(frozen=True)
class MessagesRequest:
    model: str  # as the client named it (any name reaches the model served)
    chat: ChatRequest
    max_tokens: int
    thinking: bool = False  # asks for the model's thinking


def _text(raw, where: str) -> str:
    """A string, or a list of text blocks joined."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise bad_request(f"{where} must be a string or a list of text blocks", where)
    parts = []
    for i, block in enumerate(raw):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise bad_request(f"{where}[{i}] must be a text block {{'type': 'text', 'text': ...}}", f"{where}[{i}]")
        parts.append(block["text"])
    return "".join(parts)


def _turn(role: str, content, where: str) -> list[dict]:
    """One Anthropic turn as chat messages: text (and earlier tool calls) for its role, each tool result as a
    `tool` message of its own."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of content blocks", f"{where}.content")
    out: list[dict] = []
    text: list[str] = []
    calls: list[dict] = []
    images: list[ImageRef] = []

    def flush() -> None:
        if text or calls:
            extra = {"tool_calls": list(calls)} if calls else {}
            out.append({"role": role, "content": "".join(text), **extra, **({"images": tuple(images)} if images else {})})
            text.clear()
            calls.clear()
            images.clear()

    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "image" and role == "user":
            images.append(_image(block, at))
            text.append(MARKER)
        elif kind in DROPPED_BLOCKS and role == "assistant":
            continue
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) or not isinstance(block.get("input"), dict):
                raise bad_request(f"{at} must be {{'type': 'tool_use', 'id': ..., 'name': ..., 'input': {{...}}}}", at)
            calls.append({"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": block["input"]}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise bad_request(f"{at}.tool_use_id must be a string", f"{at}.tool_use_id")
            if not isinstance(block.get("is_error", False), bool):
                raise bad_request(f"{at}.is_error must be true or false", f"{at}.is_error")
            flush()
            result = _text(block.get("content", ""), f"{at}.content")
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": f"error: {result}" if block.get("is_error") else result})
        else:
            allowed = "text, tool_use, thinking" if role == "assistant" else "text, image, tool_result"
            raise bad_request(f"{at}: a {role} turn holds {allowed} blocks here, not {kind!r}", at)
    flush()
    return out


def _image(block: dict, where: str) -> ImageRef:
    """{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ...}} or a URL source."""
    src = block.get("source")
    kind = src.get("type") if isinstance(src, dict) else None
    if kind == "base64" and isinstance(src.get("data"), str) and isinstance(src.get("media_type", ""), str):
        return ImageRef(f"{where}.source.data", src["data"], False)
    if kind == "url" and isinstance(src.get("url"), str):
        return ImageRef(f"{where}.source.url", src["url"], True)
    raise bad_request(f"{where}.source must be {{'type': 'base64', 'media_type': 'image/png', 'data': ...}} or {{'type': 'url', 'url': ...}}",
                      f"{where}.source")


def _messages(raw, system) -> tuple[tuple[dict, ...], tuple[ImageRef, ...]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list of {role, content} turns", "messages")
    if len(raw) > MAX_MESSAGES:
        raise bad_request(f"'messages' holds {len(raw)} turns; at most {MAX_MESSAGES}", "messages")
    out = [{"role": "system", "content": _text(system, "system")}] if system not in (None, "", []) else []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be 'user' or 'assistant'", f"{where}.role")
        out += _turn(m["role"], m.get("content"), where)
    if raw[-1]["role"] == "assistant":
        raise bad_request("the last turn is the assistant's: continuing a reply (a prefill) is not supported here", f"messages[{len(raw) - 1}]",
                          "unsupported_parameter")
    return gather_images(out)


def _tools(raw, choice) -> tuple[tuple[dict, ...], str | None]:
    """Anthropic's tools as the chat template takes functions, and the choice as the ChatRequest holds it."""
    if choice is not None and (not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")):
        raise bad_request("'tool_choice' must be {'type': 'auto' | 'any' | 'tool' | 'none'}", "tool_choice")
    if raw is None or raw == [] or (choice or {}).get("type") == "none":
        return (), None
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise bad_request(f"'tools' must be a list of at most {MAX_TOOLS} tools", "tools")
    tools = []
    for i, tool in enumerate(raw):
        ok = isinstance(tool, dict) and isinstance(tool.get("name"), str) and TOOL_NAME.fullmatch(tool["name"])
        if not ok or not isinstance(tool.get("input_schema"), dict) or not isinstance(tool.get("description", ""), str):
            raise bad_request(f"tools[{i}] must be {{'name': [A-Za-z0-9_-]{{1,64}}, 'description': ..., 'input_schema': {{...}}}}", f"tools[{i}]")
        tools.append({"type": "function", "function": {"name": tool["name"], "description": tool.get("description", ""),
                                                       "parameters": tool["input_schema"]}})
    names = [t["function"]["name"] for t in tools]
    kind = (choice or {}).get("type", "auto")
    if kind == "tool":
        if choice.get("name") not in names:
            raise bad_request(f"'tool_choice.name' must be one of {names}", "tool_choice.name")
        return tuple(tools), choice["name"]
    return tuple(tools), {"auto": "auto", "any": "required"}[kind]


def _output_format(raw) -> dict | None:
    """`output_config`: its `format` (a JSON schema the reply follows) as a response_format; `effort` is checked
    and changes nothing here."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("'output_config' must be an object", "output_config")
    if raw.get("effort") not in (None, *EFFORTS):
        raise bad_request(f"'output_config.effort' must be one of {', '.join(EFFORTS)}", "output_config.effort")
    fmt = raw.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise bad_request("'output_config.format' must be {'type': 'json_schema', 'schema': {...}}", "output_config.format")
    return {"type": "json_schema", "json_schema": {"schema": fmt["schema"]}}


def wants_thinking(raw) -> bool:
    """Whether the request asks for the model's thinking (checked against the model once it is known)."""
    if raw is None:
        return False
    if not isinstance(raw, dict) or raw.get("type") not in ("enabled", "disabled", "adaptive"):
        raise bad_request("'thinking' must be {'type': 'enabled', 'budget_tokens': N}, {'type': 'adaptive'} or {'type': 'disabled'}", "thinking")
    return raw["type"] != "disabled"


def check_thinking(wants: bool, thinks: bool) -> None:
    if wants and not thinks:
        raise bad_request("'thinking': this model does not think (leave it out)", "thinking", "unsupported_parameter")


def count_request(data: dict) -> ChatRequest:
    """What /v1/messages/count_tokens counts: the prompt the same request to /v1/messages would make."""
    _model(data)
    wants_thinking(data.get("thinking"))
    tools, choice = _tools(data.get("tools"), data.get("tool_choice"))
    messages, images = _messages(data.get("messages"), data.get("system"))
    return ChatRequest(messages, Generation(Sampling()), tools, choice, images=images)


def _model(data: dict) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: a string (any name reaches the model served)", "model")
    return model


def messages_request(data: dict) -> MessagesRequest:
    body = Fields(data)
    model = _model(data)
    max_tokens = body.integer("max_tokens", None, 1, INT32_MAX)
    if max_tokens is None:
        raise bad_request("'max_tokens' is required: the most tokens the reply may have", "max_tokens")
    stops = data.get("stop_sequences")
    if stops is not None and not isinstance(stops, list):
        raise bad_request("'stop_sequences' must be a list of strings", "stop_sequences")
    if data.get("metadata") is not None and not isinstance(data.get("metadata"), dict):
        raise bad_request("'metadata' must be an object", "metadata")
    thinking = wants_thinking(data.get("thinking"))
    d = Sampling()
    sampling = Sampling(
        temperature=body.number("temperature", ANTHROPIC_DEFAULT_TEMPERATURE, (0.0, 1.0)),
        top_p=body.number("top_p", d.top_p),
        top_k=body.integer("top_k", d.top_k, 0, INT32_MAX),
        max_tokens=max_tokens,
    )
    fmt = _output_format(data.get("output_config"))
    gen = Generation(sampling, stop_strings(stops, "stop_sequences"), body.boolean("stream", False), response_format=fmt)
    tools, choice = _tools(data.get("tools"), data.get("tool_choice"))
    if choice not in (None, "auto") and fmt is not None:
        raise bad_request("a 'tool_choice' that forces a call cannot be combined with 'output_config.format'", "tool_choice")
    think = None if data.get("thinking") is None else thinking  # said: switches a template that has the switch
    messages, images = _messages(data.get("messages"), data.get("system"))
    return MessagesRequest(model, ChatRequest(messages, gen, tools, choice, think, images), max_tokens,
                           thinking)
