"""Reranking with a reranker GGUF (a cross-encoder): POST /v1/rerank (also /rerank and /v1/reranking, as
llama.cpp's server answers them), in Jina's and Cohere's shape. Each (query, document) pair is scored in the
model's embedding context with rank pooling (`edgellm.engine.embedding`); results come best first.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..engine.embedding import Embedder, rank_pair
from ..errors import EdgeError
from .api import Dialect, ServeState, read_json, served
from .errors import ApiError, bad_request
from .schemas import Fields

MAX_DOCUMENTS = 1024
PATHS = ("/v1/rerank", "/rerank", "/v1/reranking")


@dataclass(frozen=True)
class RerankRequest:
    model: str | None
    query: str
    documents: tuple[str, ...]
    top_n: int
    return_documents: bool


def parse(data: dict) -> RerankRequest:
    body = Fields(data)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    query = data.get("query")
    if not isinstance(query, str) or not query:
        raise bad_request("'query' must be a non-empty string", "query")
    raw = data.get("documents")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'documents' must be a non-empty list of strings or {\"text\": ...} objects", "documents")
    if len(raw) > MAX_DOCUMENTS:
        raise bad_request(f"'documents' holds {len(raw)} documents; at most {MAX_DOCUMENTS}", "documents")
    documents = []
    for i, doc in enumerate(raw):
        text = doc.get("text") if isinstance(doc, dict) else doc
        if not isinstance(text, str) or not text:
            raise bad_request(f"documents[{i}] must be a non-empty string or an object with a non-empty 'text'", f"documents[{i}]")
        documents.append(text)
    top_n = body.integer("top_n", len(documents), 1, 1 << 31)
    return RerankRequest(model, query, tuple(documents), min(top_n, len(documents)), body.boolean("return_documents", False))


def _ranker(state: ServeState) -> Embedder:
    if not state.embedder.ranks:
        raise ApiError(400, f"{state.model_id} is not a reranker: serve a reranker GGUF (a cross-encoder) to rerank documents",
                       "unsupported_model", "model")
    try:
        return state.embedder.get()
    except EdgeError as exc:
        raise ApiError(400, str(exc), "unsupported_model", "model") from None


def _score_all(state: ServeState, req: RerankRequest) -> tuple[list[float], int]:
    """Each document's score and the tokens scored. Every pair is checked against the context before any runs.
    Runs in a worker thread."""
    ranker = _ranker(state)
    pairs = [rank_pair(state.engine.model, lambda text, special: state.engine.tokenize(text, False, special), req.query, doc)
             for doc in req.documents]
    for i, tokens in enumerate(pairs):
        if len(tokens) > ranker.n_ctx:
            raise ApiError(400, f"documents[{i}] with the query is {len(tokens)} tokens; the reranker's context holds {ranker.n_ctx}: "
                                "shorten the document or the query", "context_length_exceeded", f"documents[{i}]")
    return [ranker.score(tokens) for tokens in pairs], sum(len(t) for t in pairs)


async def rerank(request: Request):
    data = await read_json(request)
    req = parse(data)
    state = await served(request, req.model)
    scores, n_tokens = await run_in_threadpool(_score_all, state, req)
    best = sorted(range(len(scores)), key=lambda i: -scores[i])[: req.top_n]
    results = [{"index": i, "relevance_score": scores[i], **({"document": {"text": req.documents[i]}} if req.return_documents else {})}
               for i in best]
    return JSONResponse({"model": req.model or state.model_id, "object": "list", "results": results,
                         "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


DIALECT = Dialect(prefixes=PATHS, routes=tuple(Route(p, rerank, methods=["POST"]) for p in PATHS), error_body=ApiError.body)
