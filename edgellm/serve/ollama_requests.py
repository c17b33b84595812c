"""Ollama's requests, read from untrusted JSON into the typed requests the server runs. Ollama's `options`
map onto the sampling (temperature, top_p, top_k, min_p, seed, stop, num_predict, repeat_penalty, presence
and frequency penalties); the ones that only matter when a model loads (num_ctx, num_gpu, num_thread, ...) are
type-checked and left to the server's plan; the ones whose effect this server cannot give (mirostat,
typical_p, ...) are accepted only at the value that changes nothing. Every field is checked; a failure is a
400 naming it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..engine.runtime import PENALTY_LAST_N
from ..engine.sampling import Sampling
from .errors import bad_request
from .schemas import (
    INT32_MAX, INT64, ChatRequest, Fields, Generation, ImageRef, each_message, function_tools, gather_images, mark_images, stop_strings,
)

ROLES = ("system", "user", "assistant", "tool")
SAMPLING_NUMBERS = ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
# options that take effect when a model loads: the server's plan has decided them (--ctx sets each slot's context)
LOAD_OPTIONS = {
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "num_thread": int, "num_keep": int,
    "numa": bool, "low_vram": bool, "f16_kv": bool, "logits_all": bool, "vocab_only": bool, "use_mmap": bool, "use_mlock": bool,
    "embedding_only": bool, "penalize_newline": bool,
}
# sampling this server does not do: accepted at the value that leaves the sampling as it is
NEUTRAL = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0, "repeat_last_n": PENALTY_LAST_N}
MIROSTAT_NUMBERS = ("mirostat_tau", "mirostat_eta")  # mean nothing without mirostat
KNOWN = {*SAMPLING_NUMBERS, "top_k", "seed", "num_predict", "stop", *LOAD_OPTIONS, *NEUTRAL, *MIROSTAT_NUMBERS}
# a Go duration ("5m", "1h30m", "-1s") as keep_alive takes it
DURATION = re.compile(r"-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+|-?\d+")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# request fields that ask for what this server does not give: field -> the values that ask for nothing
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "suffix": (None, ""), "template": (None, ""), "context": (None, []),
               "width": (None,), "height": (None,), "steps": (None,)}


def check_think(data: dict, name: str, thinks: bool) -> None:
    """`think` asks for reasoning: only a model whose template teaches it can give it."""
    if data.get("think") not in (None, False) and not thinks:
        raise bad_request(f'"{name}" does not support thinking', "think", "unsupported_parameter")


def duration_seconds(raw) -> float | None:
    """A number of seconds or a Go duration ("5m", "1h30m", "-1") in seconds; None if it is neither."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
        return float(raw)
    if isinstance(raw, str) and DURATION.fullmatch(raw.strip()):
        text = raw.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        parts = DURATION_PART.findall(text)
        return sign * (sum(float(n) * DURATION_UNITS[u] for n, u in parts) if parts else abs(float(text)))
    return None


def keep_alive(data: dict) -> float | None:
    """`keep_alive` in seconds (negative: for ever); None when the request does not say."""
    raw = data.get("keep_alive")
    if raw is None:
        return None
    seconds = duration_seconds(raw)
    if seconds is None:
        raise bad_request("'keep_alive' must be a number of seconds or a duration such as \"5m\"", "keep_alive")
    return seconds


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | None  # None: only load the model (it is loaded)
    raw: bool  # the prompt as it is, without the chat template
    chat: ChatRequest  # the prompt (after `system`) as one user turn, and how to generate


def _sampling(raw) -> tuple[Sampling, tuple[str, ...]]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_request("'options' must be an object", "options")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise bad_request(f"unknown option 'options.{unknown[0]}': the options are {', '.join(sorted(KNOWN))}", f"options.{unknown[0]}")
    opts = Fields(raw, "options")
    for name, kind in LOAD_OPTIONS.items():
        if kind is bool:
            opts.boolean(name, False)
        else:
            opts.integer(name, None, -1, INT32_MAX)
    for name, neutral in NEUTRAL.items():
        v = raw.get(name)
        if v is not None and (isinstance(v, bool) or v != neutral):
            raise bad_request(f"'options.{name}' is not supported by this server (leave it out, or {neutral})", f"options.{name}",
                              "unsupported_parameter")
    for name in MIROSTAT_NUMBERS:
        opts.number(name, None, (0.0, 1e6))
    num_predict = opts.integer("num_predict", -1, -2, INT32_MAX)
    if num_predict == 0:
        raise bad_request("'options.num_predict' must be -1 (no limit), -2 (until the context is full) or at least 1", "options.num_predict")
    d = Sampling()
    numbers = {name: opts.number(name, getattr(d, name)) for name in SAMPLING_NUMBERS}
    sampling = Sampling(**numbers, top_k=opts.integer("top_k", d.top_k, 0, INT32_MAX), seed=opts.integer("seed", None, *INT64),
                        max_tokens=num_predict if num_predict > 0 else None)
    return sampling, stop_strings(raw.get("stop"), "options.stop")


def _format(raw) -> dict | None:
    """Ollama's `format` as a response_format: "json" (any JSON) or a JSON schema."""
    if raw is None or raw == "":
        return None
    if raw == "json":
        return {"type": "json_object"}
    if isinstance(raw, dict):
        return {"type": "json_schema", "json_schema": {"schema": raw}}
    raise bad_request("'format' must be \"json\" or a JSON schema object", "format")


def _generation(data: dict, name: str) -> Generation:
    body = Fields(data)
    for field, off in UNSUPPORTED.items():
        if data.get(field) not in off:
            raise bad_request(f"'{field}' is not supported by this server (leave it out)", field, "unsupported_parameter")
    if data.get("think") not in (None, False, True, "low", "medium", "high"):
        raise bad_request("'think' must be true, false, or low, medium or high", "think")
    keep_alive(data)
    sampling, stop = _sampling(data.get("options"))
    return Generation(sampling, stop, body.boolean("stream", True), False, _format(data.get("format")))


def _calls(raw, where: str) -> list[dict]:
    """An assistant message's earlier calls, as the chat templates take them."""
    if not isinstance(raw, list):
        raise bad_request(f"{where} must be a list", where)
    out = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments", {}), dict):
            raise bad_request(f"{where}[{i}] must be {{'function': {{'name': ..., 'arguments': {{...}}}}}}", f"{where}[{i}]")
        out.append({"id": str(call.get("id", f"call_{i}")), "type": "function", "function": {"name": fn["name"], "arguments": fn.get("arguments", {})}})
    return out


def _images(raw, where: str) -> list[ImageRef]:
    """Ollama's "images": a list of base64 strings."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise bad_request(f"'{where}' must be a list of base64-encoded images", where)
    return [ImageRef(f"{where}[{i}]", x, False) for i, x in enumerate(raw)]


def _messages(raw) -> tuple[dict, ...]:
    if raw is None:
        return ()
    out = []
    for where, m in each_message(raw, ROLES, empty=True):
        content = m.get("content", "")
        if not isinstance(content, str):
            raise bad_request(f"{where}.content must be a string", f"{where}.content")
        for field in ("thinking", "tool_name"):
            if not isinstance(m.get(field, ""), str):
                raise bad_request(f"{where}.{field} must be a string", f"{where}.{field}")
        msg = {"role": m["role"], **mark_images(content, _images(m.get("images"), f"{where}.images"))}
        if m.get("tool_calls") and m["role"] == "assistant":
            msg["tool_calls"] = _calls(m["tool_calls"], f"{where}.tool_calls")
        if m["role"] == "tool":
            msg["tool_call_id"] = msg["name"] = m.get("tool_name", "")
        out.append(msg)
    return tuple(out)


def chat_request(data: dict, name: str) -> ChatRequest:
    gen = _generation(data, name)
    tools, choice = function_tools(data.get("tools") or None, None)
    think = data.get("think")  # true, false or an effort ("low"...): any but false asks for the reasoning
    messages, images = gather_images(_messages(data.get("messages")))
    return ChatRequest(messages, gen, tools, choice if tools else None, think, images)


def generate_request(data: dict, name: str) -> GenerateRequest:
    gen = _generation(data, name)
    prompt, system = data.get("prompt"), data.get("system")
    if prompt is not None and not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string", "prompt")
    if system is not None and not isinstance(system, str):
        raise bad_request("'system' must be a string", "system")
    raw = Fields(data).boolean("raw", False)
    images = _images(data.get("images"), "images")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", **mark_images(prompt or "", images)}]
    messages, refs = gather_images(messages)
    return GenerateRequest(mark_images(prompt, images)["content"] if prompt else None, raw, ChatRequest(messages, gen, images=refs))


def show_verbose(data: dict) -> bool:
    return Fields(data).boolean("verbose", False)
