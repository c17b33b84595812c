"""Score choice tasks with llama.cpp as llama-perplexity does, so accuracies match to the last digit.

The context is llama-perplexity's for its task modes: n_parallel sequences (at least 4) of n_ctx tokens each
in one unified KV cache, n_batch = the whole context, n_ubatch 512. Each choice is tokenized whole (with
the vocabulary's BOS); the tokens all choices of a task share are decoded once, as one run of cells that
belongs to every choice's sequence, and each choice's own tokens follow in a sequence of its own. Tasks are
packed into one batch while their tokens fit the context and their sequences the sequence limit (the same
cut as llama-perplexity's, so every logit is computed from the same batch); the cache is cleared per batch.
Logits are asked for only at the positions that are scored (llama-perplexity also asks for WinoGrande's option
words and last tokens, which it does not read): each row of logits costs a product with the whole vocabulary.

What is scored, per kind (log-probabilities of a choice's tokens, each predicted from the tokens before it):
- HellaSwag and multiple choice: every token after the shared prefix, averaged (the first from the prefix's
  last logits, by a softmax with a double-precision sum); HellaSwag sums in double, multiple choice in float.
  The highest average wins (the first on a tie).
- WinoGrande: the tokens after the option word (when both sentences go on for more than 3 tokens after the
  shared prefix; otherwise from the shared prefix on), leaving out the last token when there is more than
  one, averaged in float; option 1 wins only when strictly higher. Its index arithmetic for option 2 when the
  option word is not skipped (a known quirk of llama-perplexity) is kept, so the scores are the same.

Log-probabilities are computed in single precision with a sequential sum, as llama-perplexity computes them.
That sum is slow in numpy, so every row is first summed pairwise (fast, and within the sequential sum's error
bound of it); only a task whose choices are closer than twice that bound is scored again the slow way, so every
decision is the one the sequential sum gives.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import llamacpp
from ..errors import EdgeError
from ..engine.llamacpp import default_threads
from .tasks import HELLASWAG, WINOGRANDE, Kind, Task

F32 = np.float32
WINOGRANDE_MIN_TRAILING = 3  # llama-perplexity's k_min_trailing_ctx
LOGPROB_ROWS = 64  # rows of logits turned into log-probabilities at a time (bounds the memory it takes)


@dataclass(frozen=True)
class Scored:
    number: int  # the task's number in its file
    scores: tuple[float, ...]  # per choice: the average log-probability of its scored tokens
    chosen: int
    correct: bool


@dataclass(frozen=True)
class Skipped:
    number: int
    why: str


@dataclass(frozen=True)
class _Reads:
    """The tokens a choice is scored on (`target`), each from the logits at position `pos` of sequence `seq`
    of its task (positions before the shared prefix's end are the prefix's last token)."""

    seq: np.ndarray
    pos: np.ndarray
    target: np.ndarray

    @staticmethod
    def following(s: int, seq: np.ndarray, first: int, end: int) -> _Reads:
        """Tokens first+1 .. end of sequence s, each from the position before it."""
        pos = np.arange(first, end)
        return _Reads(np.full(len(pos), s), pos, seq[pos + 1])


@dataclass
class _Prepared:
    task: Task
    seqs: list[np.ndarray]  # tokens of each choice's whole text
    prefix: int  # tokens all of them share
    required: int  # cells the task takes: the prefix once, each choice's own tokens
    reads: list[_Reads]  # per choice: which logits score which of its tokens


def _common_prefix(seqs: list[np.ndarray]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0][:n]
    same = np.ones(n, dtype=bool)
    for s in seqs[1:]:
        same &= s[:n] == first
    return int(n if same.all() else np.argmin(same))


def token_logprobs(logits: np.ndarray, rows: np.ndarray, targets: np.ndarray, exact: bool = True) -> np.ndarray:
    """log p(target) at each row, in float: max, a float sum of exp(x - max), x - max - log(sum). `exact`: the
    sum is sequential, like llama-perplexity's C loop; else pairwise (np.sum), several times faster."""
    out = np.empty(len(rows), dtype=F32)
    for i in range(0, len(rows), LOGPROB_ROWS):
        x = logits[rows[i : i + LOGPROB_ROWS]]  # a copy, worked on in place
        m = x.max(axis=1)
        picked = x[np.arange(len(x)), targets[i : i + LOGPROB_ROWS]] - m
        np.subtract(x, m[:, None], out=x)
        np.exp(x, out=x)
        sums = np.add.accumulate(x, axis=1, out=x)[:, -1] if exact else x.sum(axis=1)
        out[i : i + LOGPROB_ROWS] = picked - np.log(sums)
    return out


def sum_error_margin(n_vocab: int) -> float:
    """How far apart two choices' scores must be for the fast sum to decide as the sequential one does: a float
    sum of n positive terms is within (n - 1) units of roundoff of the true sum whatever its order, so each
    log-probability, and each average of them, moves by less than n * eps between the two sums."""
    return 2.0 * n_vocab * float(np.finfo(F32).eps)


def first_token_logprobs(row: np.ndarray, targets: list[int]) -> list[F32]:
    """log of the softmax probability of each target, the softmax summed in double and stored in float."""
    e = np.exp(row - row.max())
    total = np.add.accumulate(e, dtype=np.float64)[-1]
    return [np.log(F32(e[t] / total)) for t in targets]


class _Batch:
    """A llama_batch over arrays this object owns (tokens may belong to several sequences)."""

    def __init__(self, capacity: int, n_seq_max: int) -> None:
        import llama_cpp

        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq = np.zeros(capacity, np.int32)
        self.seq = np.zeros((capacity, n_seq_max), np.int32)
        self.output = np.zeros(capacity, np.int8)
        i32 = ctypes.POINTER(ctypes.c_int32)
        row = self.seq.strides[0]
        self._rows = (i32 * capacity)(*(ctypes.cast(self.seq.ctypes.data + i * row, i32) for i in range(capacity)))
        b = llama_cpp.llama_batch()
        b.token = self.token.ctypes.data_as(i32)
        b.embd = None
        b.pos = self.pos.ctypes.data_as(i32)
        b.n_seq_id = self.n_seq.ctypes.data_as(i32)
        b.seq_id = ctypes.cast(self._rows, ctypes.POINTER(i32))
        b.logits = self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct = b
        self.n = 0
        self.n_outputs = 0

    def clear(self) -> None:
        self.n = self.n_outputs = 0

    def add(self, tokens: np.ndarray, first_pos: int, seqs: range, output: np.ndarray | bool) -> None:
        n, k = self.n, len(tokens)
        self.token[n : n + k] = tokens
        self.pos[n : n + k] = np.arange(first_pos, first_pos + k)
        self.n_seq[n : n + k] = len(seqs)
        self.seq[n : n + k, : len(seqs)] = np.asarray(seqs, dtype=np.int32)
        self.output[n : n + k] = output
        self.n += k

    def set_last_output(self) -> None:
        self.output[self.n - 1] = 1


class ChoiceScorer:
    """One model and a context laid out like llama-perplexity's task modes. Use as a context manager."""

    def __init__(self, path: str | Path, n_ctx: int = 512, n_parallel: int = 4, n_threads: int | None = None) -> None:
        import llama_cpp

        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeError(f"no such file: {self.path}")
        self.n_parallel = max(4, n_parallel)
        with llamacpp.capture_log():
            self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(),
                                                              llama_cpp.llama_model_default_params())
            if not self.model:
                raise EdgeError(f"llama.cpp could not load {self.path}: {llamacpp.last_error() or 'unknown error'}")
            p = llama_cpp.llama_context_default_params()
            p.n_seq_max = self.n_parallel
            p.n_ctx = p.n_batch = self.n_parallel * n_ctx
            p.n_ubatch = min(512, p.n_ctx)
            p.kv_unified = True
            p.swa_full = False  # as llama-perplexity: a window-sized cache for sliding-window layers
            p.n_threads = p.n_threads_batch = n_threads or default_threads()
            self.ctx = llama_cpp.llama_init_from_model(self.model, p)
            if not self.ctx:
                llama_cpp.llama_model_free(self.model)
                raise EdgeError(f"llama.cpp could not make a context for {self.path}: "
                                f"{llamacpp.last_error() or 'unknown error'}")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.batch = _Batch(self.n_ctx, self.n_parallel)

    def __enter__(self) -> ChoiceScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        import llama_cpp

        if self.ctx is None:
            return
        llamacpp.init()  # freeing logs buffer sizes: keep them off the terminal
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
        self.ctx = None

    def tokenize(self, text: str) -> np.ndarray:
        """As llama-perplexity tokenizes a task's text (common_tokenize with add_special)."""
        return llamacpp.tokenize(self.vocab, text, "a task")

    # --- preparing -----------------------------------------------------------------------------------

    def prepare(self, kind: Kind, task: Task) -> _Prepared | Skipped:
        if not task.prompt or not task.choices or not all(task.choices):
            return Skipped(task.number, "an empty question or answer")
        texts = [task.prompt + kind.separator + c + task.after for c in task.choices]
        seqs = [self.tokenize(t) for t in texts]
        prefix = _common_prefix(seqs)
        if prefix == 0:
            return Skipped(task.number, "its choices share no first token to score them from")
        if any(len(s) == prefix for s in seqs):
            return Skipped(task.number, "a choice adds no tokens to what all choices share")
        required = prefix + sum(len(s) - prefix for s in seqs)
        if required > self.n_ctx:
            return Skipped(task.number, f"needs {required} tokens, more than the context's {self.n_ctx}")
        if len(seqs) > self.n_parallel:
            return Skipped(task.number, f"{len(seqs)} choices, more than the {self.n_parallel} sequences")
        if kind is WINOGRANDE:
            bases = [len(self.tokenize(task.prompt + c)) for c in task.choices]
            reads = _winogrande_reads(seqs, prefix, bases)
        else:  # every token after the first (which is scored from the prefix's last row on its own)
            reads = [_Reads.following(s, seq, prefix, len(seq) - 1) for s, seq in enumerate(seqs)]
        return _Prepared(task, seqs, prefix, required, reads)

    # --- scoring -------------------------------------------------------------------------------------

    def score(self, kind: Kind, tasks: list[Task] | tuple[Task, ...],
              on_batch: Callable[[int], None] | None = None) -> Iterator[Scored | Skipped]:
        """Each task's result, in order; on_batch(tasks handled so far) after each decoded batch."""
        prepared: list[_Prepared] = []
        for t in tasks:
            p = self.prepare(kind, t)
            if isinstance(p, Skipped):
                yield p
            else:
                prepared.append(p)
        max_seq = min(kind.max_seqs, self.n_parallel)
        done = len(tasks) - len(prepared)
        i0 = 0
        while i0 < len(prepared):
            i1, layout = self._pack(kind, prepared, i0, max_seq)
            logits = self._decode()
            yield from self._judge(kind, prepared[i0:i1], layout, logits)
            done += i1 - i0
            if on_batch:
                on_batch(done)
            i0 = i1

    def _pack(self, kind: Kind, prepared: list[_Prepared], i0: int,
              max_seq: int) -> tuple[int, list[tuple[int, list[np.ndarray]]]]:
        """Put tasks i0.. in the batch while they fit; returns the end and, per task, the logits row of its
        prefix's last token and, per choice, the rows of its read positions."""
        b = self.batch
        b.clear()
        n_cur = s0 = 0
        layout = []
        i1 = i0
        while i1 < len(prepared) and n_cur + prepared[i1].required <= self.n_ctx:
            p = prepared[i1]
            if s0 + len(p.seqs) > max_seq:
                break
            first_row = b.n_outputs
            b.add(p.seqs[0][: p.prefix], 0, range(s0, s0 + len(p.seqs)), False)
            b.set_last_output()
            b.n_outputs += 1
            row_of = []  # per sequence: the row of each of its own positions that has logits
            for s, seq in enumerate(p.seqs):
                out = np.zeros(len(seq) - p.prefix, dtype=bool)
                for r in p.reads:
                    out[r.pos[(r.seq == s) & (r.pos >= p.prefix)] - p.prefix] = True
                row_of.append(np.cumsum(out) - 1 + b.n_outputs)
                b.add(seq[p.prefix :], p.prefix, range(s0 + s, s0 + s + 1), out)
                b.n_outputs += int(out.sum())
            rows = []
            for r in p.reads:
                rows.append(np.full(len(r.pos), first_row))
                for s in range(len(p.seqs)):
                    own = (r.seq == s) & (r.pos >= p.prefix)
                    rows[-1][own] = row_of[s][r.pos[own] - p.prefix]
            layout.append((first_row, rows))
            s0 += len(p.seqs)
            n_cur += p.required
            i1 += 1
        return i1, layout

    def _decode(self) -> np.ndarray:
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self.batch.struct.n_tokens = self.batch.n
        rc = llama_cpp.llama_decode(self.ctx, self.batch.struct)
        if rc != 0:
            raise EdgeError(f"llama_decode failed ({rc}) on {self.path.name}")
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.ctx), shape=(self.batch.n_outputs, self.n_vocab))

    def _judge(self, kind: Kind, batch: list[_Prepared], layout: list[tuple[int, list[np.ndarray]]],
               logits: np.ndarray) -> Iterator[Scored]:
        rows = np.concatenate([r for _, task_rows in layout for r in task_rows])
        targets = np.concatenate([r.target for p in batch for r in p.reads])
        values = token_logprobs(logits, rows, targets, exact=False)
        margin = sum_error_margin(self.n_vocab)
        at = 0
        for p, (first_row, _) in zip(batch, layout):
            n = sum(len(r.pos) for r in p.reads)
            mine = slice(at, at + n)
            at += n
            scores, chosen = _decide(kind, p, logits[first_row], values[mine])
            if _closest_gap(scores) < margin:  # too close for the fast sum: decide with the sequential one
                scores, chosen = _decide(kind, p, logits[first_row], token_logprobs(logits, rows[mine], targets[mine]))
            yield Scored(p.task.number, tuple(float(s) for s in scores), chosen, chosen in p.task.gold)


def _decide(kind: Kind, p: _Prepared, first_row: np.ndarray, values: np.ndarray) -> tuple[list, int]:
    """Each choice's score from the log-probabilities of its read positions (in task order), and the choice."""
    per_choice, at = [], 0
    for r in p.reads:
        per_choice.append(values[at : at + len(r.pos)])
        at += len(r.pos)
    if kind is WINOGRANDE:
        scores = [_float_mean(v) for v in per_choice]
        return scores, 0 if scores[0] > scores[1] else 1
    firsts = first_token_logprobs(first_row, [int(s[p.prefix]) for s in p.seqs])
    mean = _double_mean if kind is HELLASWAG else _float_mean
    scores = [mean(np.concatenate(([f], v)).astype(F32)) for f, v in zip(firsts, per_choice)]
    return scores, int(np.argmax(scores))  # the first of equal maxima, as llama-perplexity's strict >


def _closest_gap(scores: list) -> float:
    """The gap between the best score and the next (what a small error in them could flip)."""
    top = sorted((float(s) for s in scores), reverse=True)
    return top[0] - top[1] if len(top) > 1 else float("inf")


def _winogrande_reads(seqs: list[np.ndarray], prefix: int, bases: list[int]) -> list[_Reads]:
    """llama-perplexity's WinoGrande tokens: those after the option word when both sentences go on for more than
    a few tokens after the shared prefix, else from the prefix on; without the last token when there is more
    than one. In the second case the second sentence's first token is read, as llama-perplexity's row arithmetic
    reads it, from the logits of the first sentence's last token (not the prefix's)."""
    skip_option = all(len(seq) - prefix > WINOGRANDE_MIN_TRAILING for seq in seqs)
    reads = []
    for s, (seq, base_option) in enumerate(zip(seqs, bases)):
        base = base_option if skip_option else prefix
        last = 1 if len(seq) - base > 1 else 0
        r = _Reads.following(s, seq, base - 1, len(seq) - 1 - last)
        if s == 1 and not skip_option and len(r.pos):
            r.seq[0], r.pos[0] = 0, len(seqs[0]) - 1
        reads.append(r)
    return reads


def _double_mean(values: np.ndarray) -> float:
    total = 0.0
    for v in values:
        total += float(v)
    return total / len(values)


def _float_mean(values: np.ndarray) -> F32:
    total = F32(0.0)
    for v in values:
        total = F32(total + v)
    return F32(total / F32(len(values)))
