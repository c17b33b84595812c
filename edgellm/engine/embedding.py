"""Embeddings from a loaded model: a second llama.cpp context on the same weights, made for embeddings, pooled
as the GGUF says (`<arch>.pooling_type`: mean, CLS, last). A model whose GGUF names no pooling (a chat model)
is mean-pooled, as llama.cpp's own embedding tool does when told nothing. One text at a time, under a lock.

A reranker (a cross-encoder) runs the same way with rank pooling: its classifier head gives one score for a
(query, document) pair, laid out as llama.cpp's server lays it out (`rank_pair`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import llama_cpp as L

from . import llamacpp
from ..errors import EdgeError
from ..formats.gguf_info import GGUFInfo

POOLING_NAMES = {L.LLAMA_POOLING_TYPE_MEAN: "mean", L.LLAMA_POOLING_TYPE_CLS: "cls", L.LLAMA_POOLING_TYPE_LAST: "last",
                 L.LLAMA_POOLING_TYPE_RANK: "rank"}
FALLBACK = L.LLAMA_POOLING_TYPE_MEAN  # for a GGUF that names no pooling


@dataclass(frozen=True)
class Embedding:
    vector: list[float]
    n_tokens: int  # the tokens embedded (after truncation)


class Embedder:
    """An embedding context of `n_ctx` tokens beside a model's own; the caller keeps the model alive longer."""

    def __init__(self, model, n_ctx: int, n_threads: int, rank: bool = False):
        """`rank`: the model is a reranker (the GGUF's `ranks`), whose scores `score` gives."""
        self._lock = threading.Lock()
        self._ctx = self._context(model, n_ctx, n_threads, L.LLAMA_POOLING_TYPE_RANK if rank else L.LLAMA_POOLING_TYPE_UNSPECIFIED)
        pooling = L.llama_pooling_type(self._ctx)
        if pooling == L.LLAMA_POOLING_TYPE_NONE:
            L.llama_free(self._ctx)
            self._ctx = self._context(model, n_ctx, n_threads, FALLBACK)
            pooling = FALLBACK
        if (pooling == L.LLAMA_POOLING_TYPE_RANK) != rank:
            self.close()
            raise EdgeError("this model is a reranker: it scores pairs of texts and makes no embeddings" if not rank
                            else "llama.cpp gave this model no ranking head")
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
        vector = self._pooled(tokens, self.n_embd)
        if normalize:
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vector = [v / norm for v in vector]
        return Embedding(vector, len(tokens))

    def score(self, tokens: list[int]) -> float:
        """A reranker's relevance score of a pair laid out by `rank_pair` (higher: more relevant)."""
        if self.pooling != "rank":
            raise EdgeError("this model is not a reranker: it makes embeddings and scores no pairs")
        return self._pooled(tokens, 1)[0]

    def _pooled(self, tokens: list[int], n_out: int) -> list[float]:
        if not 0 < len(tokens) <= self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens: the embedding context takes 1 to {self.n_ctx}")
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
            return [float(out[i]) for i in range(n_out)]

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_batch", None) is not None:
                L.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                L.llama_free(self._ctx)
                self._ctx = None


def rank_pair(model, tokenize: Callable[[str, bool], list[int]], query: str, document: str) -> list[int]:
    """The tokens a reranker scores for (query, document): its GGUF's rerank template with both filled in
    where it has one, else the query and document between the vocabulary's BOS, EOS and separator as it asks
    for them ([CLS] query [SEP] document [SEP] for BERT's). `tokenize(text, special)` adds no BOS; the texts
    are read as plain text, never as special tokens."""
    template = L.llama_model_chat_template(model, b"rerank")
    if template:
        filled = template.decode("utf-8", errors="replace").replace("{query}", query).replace("{document}", document)
        return tokenize(filled, True)
    vocab = L.llama_model_get_vocab(model)
    eos = L.llama_vocab_eos(vocab)
    eos = eos if eos != L.LLAMA_TOKEN_NULL else L.llama_vocab_sep(vocab)
    bos = [L.llama_vocab_bos(vocab)] if L.llama_vocab_get_add_bos(vocab) else []
    end = [eos] if L.llama_vocab_get_add_eos(vocab) else []
    sep = [L.llama_vocab_sep(vocab)] if L.llama_vocab_get_add_sep(vocab) else []
    return [*bos, *tokenize(query, False), *end, *sep, *tokenize(document, False), *end]


def rank_notes(info: GGUFInfo) -> tuple[str, ...]:
    """Where llama.cpp scores a reranker otherwise than it was trained, said once when it is served."""
    shapes = {t.name: t.shape for t in info.tensors}
    notes = []
    if len(shapes.get("token_types.weight", ())) == 2 and shapes["token_types.weight"][1] > 1:
        notes.append("llama.cpp reads both texts of a pair as the first segment (its batches carry no token types), where the model "
                     "learned the document as the second: scores differ from the original model's, and the order may too")
    if info.arch == "bert" and "cls.output.weight" in shapes and "cls.weight" not in shapes:
        notes.append("the GGUF has no pooler before its classifier (llama.cpp's converter drops BERT's): scores are on another "
                     "scale than the original model's")
    return tuple(notes)


class LazyEmbedder:
    """An Embedder made when first asked for (a server that never embeds never pays its memory), then kept."""

    def __init__(self, model, n_ctx: int, n_threads: int, rank: bool = False):
        self._args = (model, n_ctx, n_threads, rank)
        self.ranks = rank
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
