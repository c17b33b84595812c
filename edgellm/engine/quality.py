"""How good a quantized file is: perplexity and KL divergence from the base, through llama.cpp's logits.

The text is cut the way `llama-perplexity` cuts it, so numbers compare with llama.cpp's: the tokens
(with the vocabulary's special prefix) are split into chunks of n_ctx; each chunk is evaluated from an
empty cache with its first token replaced by BOS (when the vocabulary uses one), and only the second half
is scored: the logits at positions n_ctx/2 .. n_ctx-2 predict the tokens after them.

    perplexity(path, text, n_ctx=512) -> PPLResult
    kl_divergence(base_path, path, text, n_ctx=512) -> KLDResult   (base log-probs kept in a temp file)

`Evaluator` is the reusable part: one llama.cpp model + context that tokenizes a text into chunks and
returns the logits of a chunk (the importance-matrix pass uses it with an eval callback).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeError, UsageError
from . import llamacpp
from .llamacpp import default_threads

ProgressHook = Callable[[int, int], None]  # (chunks done, chunks total)


@dataclass(frozen=True)
class PPLResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    nll_stderr: float
    tokens: int  # scored tokens
    chunks: int
    n_ctx: int

    @property
    def ppl_stderr(self) -> float:
        """The perplexity's standard error (delta method, as llama-perplexity reports it)."""
        return self.nll_stderr * self.ppl


@dataclass(frozen=True)
class KLDResult:
    kld: float  # mean KL(base || model) per scored token (nats)
    kld_stderr: float
    kld_p99: float  # 99th percentile over tokens
    delta_p: float  # mean change in the probability of the correct token (model - base)
    same_top: float  # share of tokens where both pick the same most likely token
    ppl: PPLResult  # the model's perplexity on the same tokens
    base_ppl: PPLResult


class Evaluator:
    """One model and context for chunked evaluation. Use as a context manager."""

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 512,
        n_threads: int | None = None,
        cb_eval: object | None = None,
        loras: Sequence[tuple[str | Path, float]] = (),
    ) -> None:
        import llama_cpp

        self.path = Path(path)
        self.n_ctx = n_ctx
        if not self.path.is_file():
            raise EdgeError(f"no such file: {self.path}")
        with llamacpp.capture_log():
            mparams = llama_cpp.llama_model_default_params()
            self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
            if not self.model:
                raise EdgeError(f"llama.cpp could not load {self.path}: {llamacpp.last_error() or 'unknown error'}")
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
            threads = n_threads or default_threads()
            cparams.n_threads = cparams.n_threads_batch = threads
            if cb_eval is not None:
                cparams.cb_eval = cb_eval
            self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                llama_cpp.llama_model_free(self.model)
                raise EdgeError(f"llama.cpp could not make a context for {self.path}: {llamacpp.last_error() or 'unknown error'}")
            try:
                self.loras = llamacpp.load_loras(self.model, self.ctx, loras)
            except BaseException:
                llama_cpp.llama_free(self.ctx)
                llama_cpp.llama_model_free(self.model)
                raise
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        import llama_cpp

        if getattr(self, "ctx", None):
            llamacpp.init()  # freeing logs buffer sizes: keep them off the terminal
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            llamacpp.free_loras(self.loras)
            llama_cpp.llama_model_free(self.model)
            self.ctx = None

    def tokenize(self, text: str) -> np.ndarray:
        return llamacpp.tokenize(self.vocab, text)

    def chunks(self, tokens: np.ndarray, min_chunks: int = 1, what: str = "text") -> list[np.ndarray]:
        n = len(tokens) // self.n_ctx
        if n < min_chunks:
            raise UsageError(
                f"{what} too short: {len(tokens)} tokens, needs at least {min_chunks * self.n_ctx} "
                f"({min_chunks} chunk(s) of {self.n_ctx} tokens)"
            )
        return [tokens[i * self.n_ctx : (i + 1) * self.n_ctx] for i in range(n)]

    def eval_chunk(self, chunk: np.ndarray, first_output: int) -> np.ndarray:
        """Evaluate one chunk from an empty cache; return the logits of positions first_output.. (a view)."""
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        b = self.batch
        n = len(chunk)
        for i in range(n):
            b.token[i] = self.bos if (i == 0 and self.add_bos) else int(chunk[i])
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i >= first_output
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise EdgeError(f"llama_decode failed ({rc}) on {self.path.name}")
        n_out = n - first_output
        ptr = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits - logits.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return x


def _scored(ev: Evaluator, text: str, progress: ProgressHook | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk: (log-probs of the scored positions, the tokens they predict)."""
    chunks = ev.chunks(ev.tokenize(text), what="evaluation text")
    first = ev.n_ctx // 2
    for i, chunk in enumerate(chunks):
        logits = ev.eval_chunk(chunk, first)[:-1]  # the last position predicts past the chunk
        yield _log_softmax(logits), chunk[first + 1 :]
        if progress:
            progress(i + 1, len(chunks))


def _ppl(nll: np.ndarray, n_ctx: int, chunks: int) -> PPLResult:
    mean = float(nll.mean())
    err = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    return PPLResult(ppl=math.exp(mean), nll=mean, nll_stderr=err, tokens=len(nll), chunks=chunks, n_ctx=n_ctx)


def perplexity(
    path: str | Path, text: str, n_ctx: int = 512, n_threads: int | None = None, progress: ProgressHook | None = None,
    loras: Sequence[tuple[str | Path, float]] = (),
) -> PPLResult:
    nll: list[np.ndarray] = []
    with Evaluator(path, n_ctx, n_threads, loras=loras) as ev:
        for logp, targets in _scored(ev, text, progress):
            nll.append(-logp[np.arange(len(targets)), targets].astype(np.float64))
    return _ppl(np.concatenate(nll), n_ctx, len(nll))


class BaseLogProbs:
    """The base model's log-probs for every scored position, in a temp file (vocab x tokens is big).

    Compute once, then compare any number of quantized files against it with `compare`.
    """

    def __init__(self, base_path: str | Path, text: str, n_ctx: int = 512, n_threads: int | None = None,
                 progress: ProgressHook | None = None, folder: str | Path | None = None) -> None:
        self.text, self.n_ctx, self.n_threads = text, n_ctx, n_threads
        fd, name = tempfile.mkstemp(prefix=".edgellm-base-logprobs.", suffix=".partial", dir=folder)
        os.close(fd)
        self.file = Path(name)
        try:
            self._fill(base_path, progress)
        except BaseException:
            self.close()
            raise

    def _fill(self, base_path: str | Path, progress: ProgressHook | None) -> None:
        nll, targets = [], []
        with Evaluator(base_path, self.n_ctx, self.n_threads) as ev, open(self.file, "wb") as f:
            self.n_vocab = ev.n_vocab
            for logp, tgt in _scored(ev, self.text, progress):
                logp.tofile(f)
                nll.append(-logp[np.arange(len(tgt)), tgt].astype(np.float64))
                targets.append(tgt)
        self.targets = np.concatenate(targets)
        self.per_chunk = len(targets[0])
        self.ppl = _ppl(np.concatenate(nll), self.n_ctx, len(targets))
        self.logp = np.memmap(self.file, dtype=np.float32, mode="r", shape=(len(self.targets), self.n_vocab))

    def compare(
        self, path: str | Path, progress: ProgressHook | None = None, loras: Sequence[tuple[str | Path, float]] = ()
    ) -> KLDResult:
        """`path` (with LoRA adapters (file, scale), if given) against the base."""
        kld, nll, dp, same = [], [], [], []
        with Evaluator(path, self.n_ctx, self.n_threads, loras=loras) as ev:
            if ev.n_vocab != self.n_vocab:
                raise EdgeError(f"{Path(path).name} has {ev.n_vocab} tokens, the base {self.n_vocab}: not comparable")
            for i, (logp, tgt) in enumerate(_scored(ev, self.text, progress)):
                base = np.asarray(self.logp[i * self.per_chunk : (i + 1) * self.per_chunk])
                rows = np.arange(len(tgt))
                kld.append((np.exp(base) * (base - logp)).sum(axis=1, dtype=np.float64))
                nll.append(-logp[rows, tgt].astype(np.float64))
                dp.append(np.exp(logp[rows, tgt]) - np.exp(base[rows, tgt]))
                same.append(logp.argmax(axis=1) == base.argmax(axis=1))
        k = np.concatenate(kld)
        return KLDResult(
            kld=float(k.mean()),
            kld_stderr=float(k.std(ddof=1) / math.sqrt(len(k))) if len(k) > 1 else 0.0,
            kld_p99=float(np.percentile(k, 99)),
            delta_p=float(np.concatenate(dp).mean()),
            same_top=float(np.concatenate(same).mean()),
            ppl=_ppl(np.concatenate(nll), self.n_ctx, len(nll)),
            base_ppl=self.ppl,
        )

    def close(self) -> None:
        self.logp = None
        self.file.unlink(missing_ok=True)

    def __enter__(self) -> BaseLogProbs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kl_divergence(
    base_path: str | Path, path: str | Path, text: str, n_ctx: int = 512, n_threads: int | None = None,
    progress: ProgressHook | None = None,
) -> KLDResult:
    with BaseLogProbs(base_path, text, n_ctx, n_threads, progress) as base:
        return base.compare(path, progress)
