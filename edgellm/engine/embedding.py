"""Embeddings from a loaded model: a second llama.cpp context on the same weights, made for embeddings, pooled
as the GGUF says (`<arch>.pooling_type`: mean, CLS, last). A model whose GGUF names no pooling (a chat model)
is mean-pooled, as llama.cpp's own embedding tool does when told nothing. One text at a time, under a lock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import llama_cpp as L

from . import llamacpp
from ..errors import EdgeError

POOLING_NAMES = {L.LLAMA_POOLING_TYPE_MEAN: "mean", L.LLAMA_POOLING_TYPE_CLS: "cls", L.LLAMA_POOLING_TYPE_LAST: "last",
                 L.LLAMA_POOLING_TYPE_RANK: "rank"}
FALLBACK = L.LLAMA_POOLING_TYPE_MEAN  # for a GGUF that names no pooling


@dataclass(frozen=True)
class Embedding:
    vector: list[float]
    n_tokens: int  # the tokens embedded (after truncation)


class Embedder:
    """An embedding context of `n_ctx` tokens beside a model's own; the caller keeps the model alive longer."""

    def __init__(self, model, n_ctx: int, n_threads: int):
        self._lock = threading.Lock()
        self._ctx = self._context(model, n_ctx, n_threads, L.LLAMA_POOLING_TYPE_UNSPECIFIED)
        pooling = L.llama_pooling_type(self._ctx)
        if pooling == L.LLAMA_POOLING_TYPE_NONE:
            L.llama_free(self._ctx)
            self._ctx = self._context(model, n_ctx, n_threads, FALLBACK)
            pooling = FALLBACK
        if pooling == L.LLAMA_POOLING_TYPE_RANK:
            self.close()
            raise EdgeError("this model is a reranker: it scores pairs of texts and makes no embeddings")
        self.pooling = POOLING_NAMES[pooling]
        self.n_ctx = n_ctx
        self.n_embd = L.llama_model_n_embd(model)
        self._batch = L.llama_batch_init(n_ctx, 0, 1)

    @staticmethod
    def _context(model, n_ctx: int, n_threads: int, pooling: int):
        cp = L.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx  # a text is pooled in one batch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.embeddings = True
        cp.pooling_type = pooling
        with llamacpp.capture_log():
            ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            raise EdgeError(f"llama.cpp could not make a {n_ctx}-token embedding context: {llamacpp.last_error() or 'out of memory?'}")
        return ctx

    def embed(self, tokens: list[int], normalize: bool = True) -> Embedding:
        """The pooled vector of `tokens` (at most n_ctx of them), scaled to length 1 if `normalize`."""
        if not 0 < len(tokens) <= self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens: an embedding takes 1 to {self.n_ctx}")
        with self._lock:
            if self._ctx is None:
                raise EdgeError("the embedding context is closed")
            L.llama_memory_clear(L.llama_get_memory(self._ctx), True)
            b = self._batch
            for i, tok in enumerate(tokens):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, i, 1, True
                b.seq_id[i][0] = 0
            b.n_tokens = len(tokens)
            rc = L.llama_decode(self._ctx, b)
            if rc != 0:
                raise EdgeError(f"llama.cpp failed to embed {len(tokens)} tokens (code {rc}): {llamacpp.last_error()}")
            out = L.llama_get_embeddings_seq(self._ctx, 0)
            vector = [float(out[i]) for i in range(self.n_embd)]
        if normalize:
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vector = [v / norm for v in vector]
        return Embedding(vector, len(tokens))

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_batch", None) is not None:
                L.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                L.llama_free(self._ctx)
                self._ctx = None


class LazyEmbedder:
    """An Embedder made when first asked for (a server that never embeds never pays its memory), then kept."""

    def __init__(self, model, n_ctx: int, n_threads: int):
        self._args = (model, n_ctx, n_threads)
        self._lock = threading.Lock()
        self._embedder: Embedder | None = None

    def get(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(*self._args)
            return self._embedder

    def close(self) -> None:
        with self._lock:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None
