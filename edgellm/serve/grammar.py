"""`response_format` as a llama.cpp grammar: JSON of any shape, or JSON that follows a schema; and a forced
tool call as the `<tool_call>{"name": ..., "arguments": ...}</tool_call>` text that tool-calling templates teach.

llama-cpp-python turns a JSON schema into GBNF; llama.cpp's grammar sampler then only lets through tokens
that keep the reply inside the grammar, so a reply that ends normally always parses.
"""

from __future__ import annotations

import json
import re

import llama_cpp as L
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from .errors import bad_request

MAX_GRAMMAR_CHARS = 1 << 20  # a schema that expands past this is refused before llama.cpp parses it


def _from_schema(schema, param: str) -> str:
    try:
        text = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter is third-party code fed untrusted input: any failure is the schema's
        raise bad_request(f"{param}: this schema cannot be turned into a grammar: {exc}", param) from exc
    if len(text) > MAX_GRAMMAR_CHARS:
        raise bad_request(f"{param}: the schema makes a grammar that is too large", param)
    return text


def gbnf(response_format: dict | None) -> str | None:
    """The grammar text a response_format asks for (None: free text)."""
    if response_format is None:
        return None
    if response_format["type"] == "json_object":
        return JSON_GBNF
    return _from_schema(response_format["json_schema"].get("schema", {}), "response_format")


def tool_call_gbnf(tools: tuple[dict, ...], name: str | None) -> str:
    """One `<tool_call>` of the function `name` (None: any of `tools`) with arguments that follow its schema."""
    fns = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for f in fns]
    text = _from_schema(calls[0] if len(calls) == 1 else {"anyOf": calls}, "tools")
    # the schema's grammar becomes one rule inside the tag's
    return re.sub(r"(?m)^root ::=", "tool-call ::=", text) + '\nroot ::= "<tool_call>\\n" tool-call "\\n</tool_call>"\n'


def grammar_sampler(vocab, text: str):
    """A llama.cpp grammar sampler for `text`; the caller owns it (a sampler chain takes it over)."""
    smpl = L.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    if not smpl:
        raise bad_request("response_format: llama.cpp refused the grammar made from this schema", "response_format")
    return smpl
