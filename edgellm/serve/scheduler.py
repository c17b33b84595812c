"""The batching loop. One thread owns the llama.cpp context; each step puts the next token of every
generating slot and a chunk of every new prompt into ONE `llama_decode` batch (each token tagged with its
slot's sequence id), then samples each slot from its own row of logits with its own native sampler chain.
HTTP handlers hand jobs over through a queue and get text back through a callback.

Each slot is one llama.cpp sequence with its own share of the KV cache (n_ctx / slots cells). A finished
slot keeps its tokens in the cache: a new request that starts the same way (a chat resent with one more
turn) goes to the slot that holds the longest common start, and only the rest is evaluated.

With speculation on (the engine's, n-gram lookup), a generating slot puts its guesses after its next token in the
same batch, with logits at each; its tokens are then sampled position by position with its own chain while they
equal the guesses (engine.speculate), and its rejected guesses leave its sequence's cells.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import llama_cpp as L

from ..engine import llamacpp
from ..engine.runtime import Engine, Sampling, sampler_chain
from ..testhooks import pause_point
from ..engine.speculate import NgramProposer, Pace
from ..engine.vision import MediaPrompt
from ..errors import EdgeError
from .metrics import Metrics
from .textstream import TextStream


@dataclass(frozen=True)
class Finished:
    """The last event of a job."""

    reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    message: str = ""  # what went wrong, for "error"
    stop: str | None = None  # the stop string that ended the reply ("stop" for the end-of-turn token leaves it None)
    prompt_s: float = 0.0  # from getting a slot to the first sampled token: the prompt's evaluation
    gen_s: float = 0.0  # from the first sampled token to the end


@dataclass
class Job:
    tokens: list[int]  # the prompt
    sampling: Sampling
    stop: tuple[str, ...]
    deliver: Callable[[str | Finished], None]  # called on the scheduler thread: text pieces, then one Finished
    # called once after each batching step in which the job got events: `deliver` may only queue them until then
    wake: Callable[[], None]
    grammar: object | None = None  # a grammar sampler, owned by the job until a slot's chain takes it over
    cancelled: threading.Event = field(default_factory=threading.Event)
    # a prompt with pictures: its chunks (owned by the job until evaluated); `tokens` then holds a key per position
    media: MediaPrompt | None = None


class QueueFull(Exception):
    pass


@dataclass
class Slot:
    seq: int  # llama.cpp sequence id
    cache: list[int] = field(default_factory=list)  # the tokens this sequence's KV cells hold, in order
    job: Job | None = None
    chain: object = None  # the job's native sampler chain
    text: TextStream | None = None
    n_gen: int = 0
    next_token: int | None = None  # sampled, decoded in the next step; None while the prompt is evaluated
    started: float = 0.0  # perf_counter() when the job got this slot
    first: float | None = None  # perf_counter() at its first sampled token
    proposer: NgramProposer | None = None  # the job's guesses (speculation on)
    pace: Pace | None = None  # how far the slot guesses, learned over its jobs


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Scheduler:
    def __init__(self, engine: Engine, n_slots: int, max_queue: int, metrics: Metrics):
        self._engine = engine
        self._ctx = engine.context
        self._vocab = engine.vocab
        self._mem = L.llama_get_memory(self._ctx)
        self.n_ctx_slot = L.llama_n_ctx_seq(self._ctx)
        self._n_batch = L.llama_n_batch(self._ctx)
        self._n_ubatch = L.llama_n_ubatch(self._ctx)
        self._batch = L.llama_batch_init(self._n_batch, 0, 1)
        self.slots = [Slot(i) for i in range(n_slots)]
        self._max_queue = max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0  # jobs submitted and not yet in a slot (or dropped): the queue, and one being placed
        self._lock = threading.Lock()  # `_pending` and the slots' jobs change together under it
        self._pieces: dict[int, bytes] = {}
        self._metrics = metrics
        self._stopping = False
        self._to_wake: set[Callable[[], None]] = set()  # `Job.wake` of the jobs given events since the last step
        self.error: str | None = None  # set if the loop itself failed: the server can no longer answer
        self._thread = threading.Thread(target=self._run, name="edgellm-scheduler", daemon=True)
        spec = engine.speculation
        self._spec = spec if spec is not None and spec.draft is None else None  # slots guess by n-gram lookup alone
        if self._spec is not None:
            for slot in self.slots:
                slot.pace = Pace(self._spec.draft_min, self._spec.draft_max, self._spec.adaptive)

    # --- the HTTP side (any thread) -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when `max_queue` jobs would wait for a slot."""
        with self._lock:
            if self._pending >= self._max_queue + len(self.slots) - self.busy:
                raise QueueFull
            self._pending += 1
        self._queue.put(job)

    def request_stop(self) -> None:
        """End every job (their clients get an error) and the loop after the current step. Only sets a flag,
        so a signal handler may call it; an idle loop wakes up in `stop`."""
        self._stopping = True

    def stop(self) -> None:
        """End every job and the loop, and wait for it."""
        if self._batch is None:
            return
        self._stopping = True
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()
        L.llama_batch_free(self._batch)
        self._batch = None

    @property
    def busy(self) -> int:
        return sum(s.job is not None for s in self.slots)

    @property
    def queued(self) -> int:
        return self._pending

    # --- the loop (the scheduler thread) --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                if self.busy == 0:
                    job = self._queue.get()  # idle: sleep until there is work
                    if job is None:
                        break
                    self._start(job)
                self._admit()
                self._reap_cancelled()
                self._engine.adapt_threads(midway=True)  # streams last long: follow the load between batches
                if self.busy:
                    self._step()
                if not self.busy:  # else the next step hands over this one's events, while llama.cpp works
                    self._wake()
        except Exception:  # a bug here must not leave clients waiting forever
            traceback.print_exc(file=sys.stderr)
            self.error = "the scheduler failed; see the server's log"
        message = self.error or "the server is shutting down"
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot, "error", message=message)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                self._drop(job, "error", message)
        self._wake()

    def _send(self, job: Job, event: str | Finished) -> None:
        job.deliver(event)
        self._to_wake.add(job.wake)

    def _wake(self) -> None:
        for wake in self._to_wake:
            wake()
        self._to_wake.clear()

    def _admit(self) -> None:
        while any(s.job is None for s in self.slots):
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                return
            self._start(job)

    def _start(self, job: Job) -> None:
        if job.cancelled.is_set():
            self._metrics.ended(cancelled=True)
            self._drop(job, "cancelled")
            return
        self._engine.adapt_threads()
        tokens = job.tokens
        free = [s for s in self.slots if s.job is None]
        slot = max(free, key=lambda s: (common_prefix(s.cache, tokens), -s.seq))
        keep = min(common_prefix(slot.cache, tokens), len(tokens) - 1)  # the last prompt token gives the logits
        if not L.llama_memory_seq_rm(self._mem, slot.seq, keep, -1) or not self._engine.window_kept(keep, slot.seq):
            L.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            keep = 0
        del slot.cache[keep:]
        with self._lock:
            slot.job = job
            self._pending -= 1
        slot.n_gen, slot.next_token = 0, None
        slot.started, slot.first = time.perf_counter(), None
        slot.text = TextStream(job.stop)
        slot.chain = sampler_chain(self._vocab, job.sampling, tokens, head=job.grammar)
        # guesses come from the text alone: an image's positions are no tokens
        slot.proposer = NgramProposer([t for t in tokens if t >= 0]) if self._spec is not None else None
        job.grammar = None  # the chain owns it now
        self._metrics.admitted(len(tokens), len(tokens) - keep)
        if job.media is not None:
            try:
                self._evaluate_media(slot, job.media, keep)
            except EdgeError as exc:
                L.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                slot.cache.clear()
                self._finish(slot, "error", message=str(exc))
                return
            finally:
                job.media.close()
                job.media = None

    def _evaluate_media(self, slot: Slot, media: MediaPrompt, keep: int) -> None:
        """Evaluate a prompt's chunks through its last image on the slot's sequence, at once (the projector encodes
        each image whole); the text after it goes through the batches as any prompt's. A chunk the cache holds only
        part of is evaluated again whole."""
        end = max(c.start + c.n_pos for c in media.chunks if c.tokens is None)
        if keep >= end:
            return
        keep = next(c.start for c in media.chunks if c.start + c.n_pos > keep)
        L.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
        del slot.cache[keep:]
        for c in media.chunks:
            if keep <= c.start < end:
                self._engine.vision.evaluate(self._ctx, c, slot.seq, self._n_batch, logits_last=False)
                slot.cache.extend(slot.job.tokens[c.start : c.start + c.n_pos])

    def _reap_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._finish(slot, "cancelled")

    def _step(self) -> None:
        """One llama_decode over every busy slot, then one sampled token for each slot that has logits."""
        b = self._batch
        n = 0
        sample_at: list[tuple[Slot, int]] = []

        def put(token: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, logits
            b.seq_id[n][0] = seq
            n += 1

        busy = [s for s in self.slots if s.job is not None]
        guessing: list[tuple[Slot, int, list[int]]] = []  # slot, batch index of its next token, its guesses
        t0 = time.perf_counter()
        for slot in busy:
            if slot.next_token is not None:
                guesses = self._guesses(slot, self._n_batch - n - 1)
                put(slot.next_token, len(slot.cache), slot.seq, True)
                slot.cache.append(slot.next_token)
                slot.next_token = None
                if slot.pace is None:
                    sample_at.append((slot, n - 1))
                    continue
                guessing.append((slot, n - 1, guesses))
                for i, g in enumerate(guesses):
                    put(g, len(slot.cache) + i, slot.seq, True)
        budget = min(self._n_ubatch, self._n_batch - n)  # prompt chunks: one ubatch a step keeps streams flowing
        for slot in busy:
            prompt = slot.job.tokens
            if budget <= 0 or len(slot.cache) >= len(prompt):  # generating slots hold their whole prompt
                continue
            start = len(slot.cache)
            end = min(len(prompt), start + budget)
            for pos in range(start, end):
                put(prompt[pos], pos, slot.seq, pos == len(prompt) - 1)
            slot.cache.extend(prompt[start:end])
            budget -= end - start
            if end == len(prompt):
                sample_at.append((slot, n - 1))
        b.n_tokens = n
        # the event loop sends the last step's text while llama.cpp evaluates this one, not while llama.cpp waits
        self._wake()
        rc = L.llama_decode(self._ctx, b)
        if rc != 0:
            message = f"llama.cpp failed to evaluate a batch of {n} tokens (code {rc}): {llamacpp.last_error()}"
            for slot in busy:
                self._finish(slot, "error", message=message)
                L.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                slot.cache.clear()
            return
        generated = 0
        for slot, i in sample_at:
            generated += self._take(slot, L.llama_sampler_sample(slot.chain, self._ctx, i))
        for slot, i, guesses in guessing:
            generated += self._check_guesses(slot, i, guesses, time.perf_counter() - t0)
        if generated:
            self._metrics.generated(generated)

    def _guesses(self, slot: Slot, room: int) -> list[int]:
        """The tokens `slot` guesses after its next one (none while guessing does not pay for it)."""
        if slot.pace is None:
            return []
        k = min(slot.pace.length(), room, self.n_ctx_slot - len(slot.cache) - 2)
        guesses = slot.proposer.propose(k, slot.pace.tentative) if k > 0 else []
        return guesses if len(guesses) >= self._spec.draft_min else []

    def _check_guesses(self, slot: Slot, i: int, guesses: list[int], seconds: float) -> int:
        """Sample `slot` at batch index i and on while its tokens equal `guesses`; drop the cells of those it
        rejected. Returns the reply tokens taken."""
        taken = kept = 0
        for j in range(len(guesses) + 1):
            tok = L.llama_sampler_sample(slot.chain, self._ctx, i + j)
            taken += self._take(slot, tok)
            if slot.job is None or j == len(guesses) or tok != guesses[j]:
                break
            slot.cache.append(tok)  # its cell holds it already
            slot.next_token = None
            kept += 1
        L.llama_memory_seq_rm(self._mem, slot.seq, len(slot.cache), -1)
        if guesses:
            slot.pace.speculative_step(len(guesses), kept, seconds)
            self._metrics.guessed(len(guesses), kept)
        else:
            slot.pace.plain_step(seconds)
        return taken

    def _take(self, slot: Slot, tok: int) -> int:
        """Handle one sampled token; return 1 if it is part of the reply."""
        job = slot.job
        s = job.sampling
        if slot.first is None:
            slot.first = time.perf_counter()
        if not s.ignore_eos and L.llama_vocab_is_eog(self._vocab, tok):
            self._finish(slot, "stop")
            return 0
        slot.n_gen += 1
        piece = self._pieces.get(tok)
        if piece is None:
            piece = self._pieces[tok] = self._engine.piece(tok)
        if slot.proposer is not None:
            slot.proposer.extend([tok])
        text, stopped = slot.text.push(piece)
        if text:
            self._send(job, text)
        # tests hold a reply here, mid-stream, until its client leaves or the server stops
        pause_point("serve.token", slot.n_gen, until=lambda: job.cancelled.is_set() or self._stopping, before=self._wake)
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif (s.max_tokens is not None and slot.n_gen >= s.max_tokens) or len(slot.cache) >= self.n_ctx_slot:
            self._finish(slot, "length")
        else:
            slot.next_token = tok
        return 1

    def _finish(self, slot: Slot, reason: str, flush: bool = True, message: str = "") -> None:
        job = slot.job
        if flush and reason in ("stop", "length"):
            tail = slot.text.flush()
            if tail:
                self._send(job, tail)
        stop = slot.text.matched if slot.text is not None else None
        now = time.perf_counter()
        first = slot.first if slot.first is not None else now
        L.llama_sampler_free(slot.chain)
        slot.job, slot.chain, slot.text, slot.next_token = None, None, None, None
        self._metrics.ended(cancelled=reason == "cancelled")
        self._send(job, Finished(reason, len(job.tokens), slot.n_gen, message, stop, first - slot.started, now - first))

    def _drop(self, job: Job, reason: str, message: str = "") -> None:
        """End a job that never got a slot."""
        with self._lock:
            self._pending -= 1
        if job.grammar is not None:
            L.llama_sampler_free(job.grammar)
            job.grammar = None
        if job.media is not None:
            job.media.close()
            job.media = None
        self._send(job, Finished(reason, len(job.tokens), 0, message))
