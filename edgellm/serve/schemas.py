"""Typed requests, read from untrusted JSON: every field the server uses is checked for type and range here,
before anything reaches llama.cpp. Fields OpenAI defines that change nothing here (`user`, `metadata`,
`store`, ...) are ignored, as OpenAI-compatible servers do; the ones whose effect this server cannot give
(`n` > 1, `logprobs`, `logit_bias`, `echo`, `suffix`) are refused rather than silently dropped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Iterator

from ..engine.sampling import Sampling
from ..engine.vision import MARKER
from .errors import bad_request

MAX_STOPS = 32  # editor plugins send a dozen stop strings for code completion; OpenAI allows 4
MAX_STOP_CHARS = 1000
MAX_MESSAGES = 100_000
MAX_TOOLS = 128  # OpenAI's limit
MAX_IMAGES = 16  # pictures in one request: each costs the projector's work and hundreds of tokens of context
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
INT32_MAX = 2**31 - 1
INT64 = (-(2**63), 2**63 - 1)

# name -> (lowest, highest) for the sampling numbers; OpenAI's ranges, llama.cpp's for its own fields
FLOAT_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "repeat_penalty": (0.01, 10.0),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# fields whose only accepted value is "off": name -> what counts as off
UNSUPPORTED = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}


@dataclass(frozen=True)
class Generation:
    """What every generating request shares: sampling, limits, stop strings, streaming and output format."""

    sampling: Sampling
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    response_format: dict | None = None  # {"type": "json_object"} or {"type": "json_schema", ...}


@dataclass(frozen=True)
class ImageRef:
    """A picture in a request, not yet decoded (that happens off the event loop): base64 data, a data: URL or an
    http(s) URL."""

    where: str  # the request field, named in a 400
    data: str
    is_url: bool  # a URL (data: or http(s)) rather than bare base64


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict, ...]  # {"role": system|user|assistant|tool, "content": str, ...}
    gen: Generation
    tools: tuple[dict, ...] = ()  # {"type": "function", "function": {"name", "description", "parameters"}}, as templates take them
    tool_choice: str | None = None  # None (tools unused), "auto", "required", or the name of the one function to call
    think: bool | str | None = None  # reasoning on or off, or an effort ("low"...) (None: the server's default)
    images: tuple[ImageRef, ...] = ()  # in the order of the MARKERs in the messages' content


def gather_images(messages: tuple[dict, ...] | list[dict]) -> tuple[tuple[dict, ...], tuple[ImageRef, ...]]:
    """The messages without the pictures the parsers hung on them (under "images"), and those pictures in order."""
    clean, images = [], []
    for m in messages:
        images += m.get("images", ())
        clean.append({k: v for k, v in m.items() if k != "images"})
    if len(images) > MAX_IMAGES:
        raise bad_request(f"the request holds {len(images)} images; at most {MAX_IMAGES}", images[MAX_IMAGES].where)
    return tuple(clean), tuple(images)


def image_url_part(part: dict, where: str) -> ImageRef:
    """OpenAI's {"type": "image_url", "image_url": {"url": ...}} (or the URL as a string, as some clients send it)."""
    raw = part.get("image_url")
    url = raw.get("url") if isinstance(raw, dict) else raw
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}.image_url must be {{'url': 'data:image/png;base64,...'}}", f"{where}.image_url")
    return ImageRef(f"{where}.image_url", url, True)


def mark_images(text: str, refs: list[ImageRef]) -> dict:
    """A message's content with a MARKER for each picture before its text, the pictures held until gather_images."""
    return {"content": MARKER * len(refs) + text, **({"images": tuple(refs)} if refs else {})}


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    gen: Generation


@dataclass
class Fields:
    """Typed reads of one JSON object's fields; each failure is a 400 naming the field (as `where.name` for
    a nested object such as Ollama's `options`)."""

    data: dict
    where: str = ""

    def get(self, name: str):
        return self.data.get(name)

    def param(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def number(self, name: str, default: float | None, bounds: tuple[float, float] | None = None) -> float | None:
        v = self.data.get(name)
        if v is None:
            return default
        lo, hi = bounds or FLOAT_RANGES[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise bad_request(f"'{self.param(name)}' must be a number from {lo:g} to {hi:g}, not {v!r}", self.param(name))
        return float(v)

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int | None:
        v = self.data.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad_request(f"'{self.param(name)}' must be an integer from {lo} to {hi}, not {v!r}", self.param(name))
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.data.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise bad_request(f"'{self.param(name)}' must be true or false, not {v!r}", self.param(name))
        return v


def text_content(content, where: str, images: list[ImageRef] | None = None) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts joined. Where `images` is
    given, image_url parts are taken too: each becomes a MARKER in the text and its ImageRef goes to `images`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if images is not None and isinstance(part, dict) and part.get("type") == "image_url":
                images.append(image_url_part(part, f"{where}[{i}]"))
                parts.append(MARKER)
                continue
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                allowed = "text and image_url parts are" if images is not None else "text parts are"
                raise bad_request(f"{where}: only {allowed} supported, not {kind!r}", where)
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{where} must be a string or a list of text parts", where)


def each_message(raw, roles, empty: bool = False) -> Iterator[tuple[str, dict]]:
    """A request's messages, each with where it is (`messages[i]`), checked to be objects with one of `roles`."""
    if not isinstance(raw, list) or not (raw or empty):
        raise bad_request(f"'messages' must be a {'' if empty else 'non-empty '}list of {{role, content}} objects", "messages")
    if len(raw) > MAX_MESSAGES:
        raise bad_request(f"'messages' holds {len(raw)} messages; at most {MAX_MESSAGES}", "messages")
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object with a role and a content", where)
        if m.get("role") not in roles:
            raise bad_request(f"{where}.role must be one of {', '.join(sorted(roles))}, not {m.get('role')!r}", f"{where}.role")
        yield where, m


def _messages(raw) -> tuple[dict, ...]:
    out = []
    for where, m in each_message(raw, ROLES):
        role = m["role"]
        calls = _tool_calls(m.get("tool_calls"), f"{where}.tool_calls") if role == "assistant" else ()
        if m.get("content") is None and not calls:
            raise bad_request(f"{where}.content is missing", f"{where}.content")
        images: list[ImageRef] = []
        msg = {"role": ROLES[role], "content": "" if m.get("content") is None else text_content(m["content"], f"{where}.content", images)}
        if images:
            msg["images"] = tuple(images)
        if calls:
            msg["tool_calls"] = list(calls)
        if role == "tool":
            if not isinstance(m.get("tool_call_id"), str):
                raise bad_request(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return tuple(out)


def _tool_calls(raw, where: str) -> tuple[dict, ...]:
    """An assistant message's earlier calls, with their JSON arguments as objects (what chat templates expect)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request(f"{where} must be a list", where)
    out = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
            raise bad_request(f"{where}[{i}] must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}", f"{where}[{i}]")
        try:
            arguments = json.loads(fn["arguments"])
        except ValueError:
            arguments = fn["arguments"]
        out.append({"id": str(call.get("id", "")), "type": "function", "function": {"name": fn["name"], "arguments": arguments}})
    return tuple(out)


def function_tools(raw, choice) -> tuple[tuple[dict, ...], str | None]:
    """The functions offered and how the model must use them."""
    if raw is None or choice == "none":
        return (), None
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_TOOLS:
        raise bad_request(f"'tools' must be a list of 1 to {MAX_TOOLS} functions", "tools")
    tools = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not TOOL_NAME.fullmatch(fn["name"]):
            raise bad_request(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': [A-Za-z0-9_-]{{1,64}}, ...}}}}", f"tools[{i}]")
        if not isinstance(fn.get("parameters", {}), dict) or not isinstance(fn.get("description", ""), str):
            raise bad_request(f"tools[{i}].function: 'parameters' must be an object and 'description' a string", f"tools[{i}]")
        spec = {"name": fn["name"], "description": fn.get("description", ""), "parameters": fn.get("parameters", {"type": "object"})}
        tools.append({"type": "function", "function": spec})
    names = [t["function"]["name"] for t in tools]
    if choice is None or choice in ("auto", "required"):
        return tuple(tools), choice or "auto"
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(named, str) or named not in names:
        raise bad_request(f"'tool_choice' must be 'none', 'auto', 'required' or {{'type': 'function', 'function': {{'name': one of {names}}}}}",
                          "tool_choice")
    return tuple(tools), named


def stop_strings(raw, param: str = "stop") -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(f"'{param}' must be a string or a list of strings", param)
    if len(stops) > MAX_STOPS:
        raise bad_request(f"'{param}' holds {len(stops)} strings; at most {MAX_STOPS}", param)
    if any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise bad_request(f"each '{param}' string must be 1 to {MAX_STOP_CHARS} characters", param)
    return tuple(stops)


def _response_format(raw) -> dict | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return raw
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), (dict, bool)):
            raise bad_request("'response_format.json_schema' must be an object with a 'schema' object", "response_format")
        return raw
    raise bad_request("'response_format.type' must be 'text', 'json_object' or 'json_schema'", "response_format")


def _max_tokens(body: Fields) -> int | None:
    a = body.integer("max_tokens", None, 1, INT32_MAX)
    b = body.integer("max_completion_tokens", None, 1, INT32_MAX)
    if a is not None and b is not None and a != b:
        raise bad_request("give 'max_tokens' or 'max_completion_tokens', not two different limits", "max_completion_tokens")
    return b if b is not None else a


def _generation(body: Fields) -> Generation:
    for name, off in UNSUPPORTED.items():
        if body.get(name) not in off:
            raise bad_request(f"'{name}' is not supported by this server (leave it out)", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise bad_request("'logit_bias' is not supported by this server (leave it out)", "logit_bias", "unsupported_parameter")
    defaults = Sampling()
    stream = body.boolean("stream", False)
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise bad_request("'stream_options' must be an object, and only with 'stream': true", "stream_options")
    include_usage = Fields(options).boolean("include_usage", False) if options else False
    sampling = Sampling(
        temperature=body.number("temperature", defaults.temperature),
        top_k=body.integer("top_k", defaults.top_k, 0, INT32_MAX),
        top_p=body.number("top_p", defaults.top_p),
        min_p=body.number("min_p", defaults.min_p),
        repeat_penalty=body.number("repeat_penalty", defaults.repeat_penalty),
        seed=body.integer("seed", None, *INT64),
        max_tokens=_max_tokens(body),
        ignore_eos=body.boolean("ignore_eos", False),
        presence_penalty=body.number("presence_penalty", 0.0),
        frequency_penalty=body.number("frequency_penalty", 0.0),
    )
    return Generation(sampling, stop_strings(body.get("stop")), stream, include_usage, _response_format(body.get("response_format")))


def _model(body: Fields) -> None:
    # Clients must name a model; any name reaches the one model served (editor plugins hard-code names).
    if body.get("model") is not None and not isinstance(body.get("model"), str):
        raise bad_request("'model' must be a string", "model")


def chat_request(data: dict) -> ChatRequest:
    body = Fields(data)
    _model(body)
    tools, choice = function_tools(data.get("tools"), data.get("tool_choice"))
    gen = _generation(body)
    if choice not in (None, "auto") and gen.response_format is not None:
        raise bad_request("a 'tool_choice' that forces a call cannot be combined with 'response_format'", "tool_choice")
    messages, images = gather_images(_messages(data.get("messages")))
    return ChatRequest(messages, gen, tools, choice, _think(data), images)


EFFORTS = {"none": False, "minimal": True, "low": True, "medium": True, "high": True}


def _think(data: dict) -> bool | str | None:
    """The thinking a request asks for: chat_template_kwargs' enable_thinking (vLLM's, llama.cpp's), else
    reasoning_effort ("none" turns it off; an effort reaches a template that reads one, and turns on another's)."""
    kwargs = data.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        value = kwargs.get("enable_thinking")
        if value is not None:
            if not isinstance(value, bool):
                raise bad_request("'chat_template_kwargs.enable_thinking' must be true or false", "chat_template_kwargs")
            return value
    effort = data.get("reasoning_effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise bad_request(f"'reasoning_effort' must be one of {', '.join(EFFORTS)}", "reasoning_effort")
    return effort if EFFORTS[effort] else False


def completion_request(data: dict) -> CompletionRequest:
    body = Fields(data)
    _model(body)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string (or a list of one)", "prompt")
    return CompletionRequest(prompt, _generation(body))
