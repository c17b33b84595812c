"""`response_format` as a llama.cpp grammar: JSON of any shape, or JSON that follows a schema.

llama-cpp-python turns a JSON schema into GBNF; llama.cpp's grammar sampler then only lets through tokens
that keep the reply inside the grammar, so a reply that ends normally always parses.
"""

from __future__ import annotations

import json

import llama_cpp as L
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from .errors import bad_request

MAX_GRAMMAR_CHARS = 1 << 20  # a schema that expands past this is refused before llama.cpp parses it


def gbnf(response_format: dict | None) -> str | None:
    """The grammar text a response_format asks for (None: free text)."""
    if response_format is None:
        return None
    if response_format["type"] == "json_object":
        return JSON_GBNF
    schema = response_format["json_schema"].get("schema", {})
    try:
        text = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter is third-party code fed untrusted input: any failure is the schema's
        raise bad_request(f"response_format.json_schema: this schema cannot be turned into a grammar: {exc}", "response_format") from exc
    if len(text) > MAX_GRAMMAR_CHARS:
        raise bad_request("response_format.json_schema: the schema makes a grammar that is too large", "response_format")
    return text


def grammar_sampler(vocab, text: str):
    """A llama.cpp grammar sampler for `text`; the caller owns it (a sampler chain takes it over)."""
    smpl = L.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    if not smpl:
        raise bad_request("response_format: llama.cpp refused the grammar made from this schema", "response_format")
    return smpl
