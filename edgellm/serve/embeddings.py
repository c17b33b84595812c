"""Embeddings of the served model: OpenAI's /v1/embeddings, Ollama's /api/embed (vectors of length 1) and its older
/api/embeddings (one raw vector). The embedding context is made on the first such request, beside the one
that generates, and pooled as the GGUF says (`edgellm.engine.embedding`).
"""

from __future__ import annotations

import base64
import struct
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..engine.embedding import Embedder, Embedding
from ..errors import EdgeError
from .api import Dialect, ServeState, read_json, served
from .errors import ApiError, bad_request
from .schemas import Fields

MAX_INPUTS = 2048  # OpenAI's limit on texts per request
ENCODINGS = ("float", "base64")


def _texts(raw, param: str) -> list[str]:
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad_request(f"'{param}' must be a string or a non-empty list of strings", param)
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"'{param}' holds {len(texts)} texts; at most {MAX_INPUTS}", param)
    if any(not t for t in texts):
        raise bad_request(f"'{param}' holds an empty string: there is nothing to embed", param)
    return texts


def _embedder(state: ServeState) -> Embedder:
    if state.embedder.ranks:
        raise ApiError(400, f"{state.model_id} is a reranker: it scores documents against a query (POST /v1/rerank) and makes no "
                            "embeddings", "unsupported_model", "model")
    try:
        return state.embedder.get()
    except EdgeError as exc:
        raise ApiError(400, str(exc), "unsupported_model") from None


def _embed_all(state: ServeState, texts: list[str], truncate: bool, normalize: bool, param: str) -> list[Embedding]:
    """Each text embedded; one longer than the context is cut to it if `truncate`, else refused. Runs in a worker thread."""
    embedder = _embedder(state)
    out = []
    for i, text in enumerate(texts):
        tokens = state.engine.tokenize(text)
        if len(tokens) > embedder.n_ctx:
            if not truncate:
                raise ApiError(400, f"{param}[{i}] is {len(tokens)} tokens; the embedding context holds {embedder.n_ctx}: shorten it"
                                    f"{' or allow truncation' if param == 'input' else ''}", "context_length_exceeded", param)
            tokens = tokens[: embedder.n_ctx]
        out.append(embedder.embed(tokens, normalize))
    return out


async def openai_embeddings(request: Request):
    data = await read_json(request)
    body = Fields(data)
    if data.get("model") is not None and not isinstance(data.get("model"), str):
        raise bad_request("'model' must be a string", "model")
    state = await served(request, data.get("model"))
    encoding = data.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise bad_request(f"'encoding_format' must be one of {', '.join(ENCODINGS)}", "encoding_format")
    n_embd = _embedder(state).n_embd if data.get("dimensions") is not None else None
    if n_embd is not None and body.integer("dimensions", None, 1, 1 << 20) != n_embd:
        raise bad_request(f"'dimensions': this model's embeddings have {n_embd}, and are not shortened", "dimensions")
    texts = _texts(data.get("input"), "input")
    done = await run_in_threadpool(_embed_all, state, texts, False, True, "input")

    def encoded(v: list[float]):
        return v if encoding == "float" else base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()

    n = sum(e.n_tokens for e in done)
    return JSONResponse({"object": "list", "model": data.get("model") or state.model_id, "usage": {"prompt_tokens": n, "total_tokens": n},
                         "data": [{"object": "embedding", "index": i, "embedding": encoded(e.vector)} for i, e in enumerate(done)]})


async def ollama_embed(state: ServeState, name: str, data: dict):
    """/api/embed: `input` (a string or list), `truncate` (default true): vectors of length 1."""
    started = time.perf_counter()
    texts = _texts(data.get("input"), "input")
    truncate = Fields(data).boolean("truncate", True)
    done = await run_in_threadpool(_embed_all, state, texts, truncate, True, "input")
    return JSONResponse({"model": name, "embeddings": [e.vector for e in done], "total_duration": int((time.perf_counter() - started) * 1e9),
                         "load_duration": 0, "prompt_eval_count": sum(e.n_tokens for e in done)})


async def ollama_embeddings(state: ServeState, data: dict):
    """/api/embeddings, Ollama's older route: one `prompt`, its vector as the model gives it (not scaled)."""
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", "prompt")
    (done,) = await run_in_threadpool(_embed_all, state, [prompt], True, False, "prompt")
    return JSONResponse({"embedding": done.vector})


DIALECT = Dialect(prefixes=("/v1/embeddings",), routes=(Route("/v1/embeddings", openai_embeddings, methods=["POST"]),), error_body=ApiError.body)
