"""Speculative decoding: guess the next few tokens cheaply, let the model check them all in one evaluation.

A proposer guesses: `NgramProposer` looks up what followed the latest few tokens the last time they appeared
(text that repeats its input: rewrites, edits, quotes), `DraftModelProposer` asks a small model with the same
vocabulary. The runtime evaluates [last token + guesses] as one batch and samples the target at every position
with its own sampler chain, keeping guesses while they equal what it sampled ("sample, then compare"). Every
token sent out is one the target sampled from its own distribution after the tokens before it, so greedy output
is the same as without speculation and sampled output has the same distribution: proposals only decide how many
of the target's tokens come out of one evaluation.

`Pace` decides each step how many tokens to guess: from the acceptance rate so far and what a step of each size
costs here, the length that gives the most tokens per second, or none while guessing does not pay (it tries
again now and then, a short probe, so a change of text is noticed).
"""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp as L

from . import llamacpp
from ..errors import EdgeError, UsageError

NGRAM_SIZES = (4, 3, 2)  # the longest match wins: fewer false continuations than single-token matches
DRAFT_MAX, DRAFT_MIN = 16, 1  # defaults of --draft-max / --draft-min
ACCEPT_DECAY = 0.9  # weight of the acceptance seen so far against the newest step's
COST_DECAY = 0.8  # the same for step costs
# A step that checks k guesses costs t_plain * (1 + s * k**COST_EXPONENT): on a CPU each extra token costs close to
# a whole one for small k and less for large k (llama.cpp's batched kernels reuse weights more); on a GPU s is near 0.
# s is measured as steps happen; until then, PRIOR_SLOPE.
COST_EXPONENT = 0.85
PRIOR_SLOPE = 1.0
PROBE_EVERY, PROBE_BACKOFF_MAX = 64, 512  # plain steps between probes while guessing does not pay; doubled per miss
PROBE_LENGTH = 2  # a probe is short: on text that does not repeat it costs about one plain step
PAYS = 1.03  # expected speed-up a step must promise over plain decoding (timing noise is a few %)


class NgramProposer:
    """Guesses the tokens that followed the most recent earlier occurrence of the latest n tokens."""

    def __init__(self, history: list[int]) -> None:
        self._tokens: list[int] = []
        self._seen: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token that followed it last
        self.extend(history)

    def extend(self, tokens: list[int]) -> None:
        toks, seen = self._tokens, self._seen
        for t in tokens:
            end = len(toks)
            for n in NGRAM_SIZES:
                if end >= n:
                    seen[tuple(toks[end - n : end])] = end
            toks.append(t)

    def propose(self, k: int, tentative: bool = False) -> list[int]:
        """Up to k tokens; `tentative` (a probe): only after a match of the longest size, which a repeat has and
        free text seldom does."""
        toks = self._tokens
        for n in NGRAM_SIZES[:1] if tentative else NGRAM_SIZES:
            at = self._seen.get(tuple(toks[-n:])) if len(toks) >= n else None
            if at is not None:
                return toks[at : at + k]
        return []


class DraftModelProposer:
    """Guesses with a small model's greedy choices. Its context follows the target's tokens: what the two share is
    kept, the rest evaluated again before each guess."""

    def __init__(self, draft, history: list[int]) -> None:
        self._draft = draft  # an Engine whose vocabulary is the target's
        self._tokens = list(history)
        self._greedy = L.llama_sampler_init_greedy()

    def extend(self, tokens: list[int]) -> None:
        self._tokens.extend(tokens)

    def propose(self, k: int, tentative: bool = False) -> list[int]:
        d, toks = self._draft, self._tokens
        room = d.info.n_ctx - len(toks) - 1
        k = min(k, room)
        if k <= 0:
            return []
        d.evaluate(toks[d.reuse_prefix(toks):])
        out: list[int] = []
        while True:
            tok = L.llama_sampler_sample(self._greedy, d.context, -1)
            out.append(tok)
            if len(out) >= k:
                return out
            d.evaluate([tok])

    def close(self) -> None:
        if self._greedy:
            L.llama_sampler_free(self._greedy)
            self._greedy = None


def expected_tokens(a: float, k: int) -> float:
    """Tokens one verification of k guesses gives when each guess is kept with probability a (after the first
    rejection nothing more is kept; the target's own token always comes out)."""
    return k + 1.0 if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


class Pace:
    """How many tokens to guess next: the length with the most expected tokens per second, or 0 (plain decoding).

    The acceptance rate and the cost of a step are both measured as the reply goes on; while no length pays, a
    short probe now and then (rarer after each probe that did not change that) keeps the acceptance rate current,
    and a step whose guesses all came true is followed by one that guesses twice as many (repeated text is
    found quickly, and its long guesses then pay for themselves)."""

    def __init__(self, draft_min: int, draft_max: int, adaptive: bool = True) -> None:
        self.draft_min, self.draft_max, self.adaptive = draft_min, draft_max, adaptive
        self.t_plain = 0.0  # seconds of a plain step (one token evaluated and sampled)
        self.slope = PRIOR_SLOPE  # s of the cost model, in plain steps
        self._slope_seen = False
        self.kept, self.tried = 3.0, 4.0  # decayed counts of guesses kept / checked: a prior of 3/4
        self._idle, self._probe_every = PROBE_EVERY, PROBE_EVERY  # a first probe right away
        self._all_kept = 0  # guesses of the last step when all of them came true, else 0
        self._best: tuple[int, float] | None = None
        self.tentative = False  # the last length() was a probe or a doubling, not a length known to pay

    @property
    def acceptance(self) -> float:
        return self.kept / self.tried if self.tried else 0.0

    def best(self) -> tuple[int, float]:
        """The guess length with the highest expected speed-up over plain decoding, and that speed-up (it changes
        only with a speculative step: kept until the next one)."""
        if self._best is None:
            self._best = self._best_now()
        return self._best

    def _best_now(self) -> tuple[int, float]:
        a, slope = self.acceptance, self.slope
        best, best_gain = 0, 1.0
        for k in range(self.draft_min, self.draft_max + 1):
            gain = expected_tokens(a, k) / (1.0 + slope * k**COST_EXPONENT)
            if gain > best_gain:
                best, best_gain = k, gain
        return best, best_gain

    def length(self) -> int:
        if not self.adaptive:
            return self.draft_max
        if self.t_plain <= 0.0:  # the first step is plain: its time is what speculation must beat
            return 0
        k, gain = self.best()
        self.tentative = gain < PAYS
        if not self.tentative:
            self._probe_every = PROBE_EVERY
            return k
        if self._all_kept:  # a run of guesses that all came true (text being repeated): guess twice as far
            return min(self.draft_max, max(self.draft_min, 2 * self._all_kept))
        self._idle += 1
        if self._idle >= self._probe_every:  # the text may repeat itself now: look again (until a probe is made)
            return max(self.draft_min, min(PROBE_LENGTH, self.draft_max))
        return 0

    def plain_step(self, seconds: float) -> None:
        self.t_plain = seconds if self.t_plain <= 0.0 else COST_DECAY * self.t_plain + (1 - COST_DECAY) * seconds

    def speculative_step(self, guessed: int, kept: int, seconds: float) -> None:
        self._idle, self._best = 0, None
        self._all_kept = guessed if kept == guessed else 0
        if self.tentative and not self._all_kept:  # a probe or doubling that failed: the next probe comes later
            self._probe_every = min(2 * self._probe_every, PROBE_BACKOFF_MAX)
        self.kept = ACCEPT_DECAY * self.kept + kept
        self.tried = ACCEPT_DECAY * self.tried + kept + (1 if kept < guessed else 0)
        if self.t_plain > 0.0 and guessed:
            slope = max(0.0, seconds / self.t_plain - 1.0) / guessed**COST_EXPONENT
            self.slope = slope if not self._slope_seen else COST_DECAY * self.slope + (1 - COST_DECAY) * slope
            self._slope_seen = True


@dataclass
class Speculation:
    """What an engine speculates with: n-gram lookup (draft None) or a draft model, and the guess lengths."""

    draft: object | None = None  # an Engine with the target's vocabulary
    draft_min: int = DRAFT_MIN
    draft_max: int = DRAFT_MAX
    adaptive: bool = True  # False: always guess draft_max tokens (to measure one length, or to test checking)

    @property
    def name(self) -> str:
        return "n-gram" if self.draft is None else f"{self.draft.info.name} {self.draft.info.level}"

    def proposer(self, history: list[int]):
        return NgramProposer(history) if self.draft is None else DraftModelProposer(self.draft, history)

    def close(self) -> None:
        if self.draft is not None:
            self.draft.close()


class VerifyBatch:
    """A llama_batch of one sequence with logits at every position: [last token + guesses]."""

    def __init__(self, n_max: int) -> None:
        self.n_max = n_max
        self.batch = L.llama_batch_init(n_max, 0, 1)

    def fill(self, tokens: list[int], pos0: int) -> None:
        if len(tokens) > self.n_max:
            raise EdgeError(f"a verification batch holds {self.n_max} tokens, not {len(tokens)}")
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1

    def free(self) -> None:
        if self.batch is not None:
            L.llama_batch_free(self.batch)
            self.batch = None


# --- vocabularies ---------------------------------------------------------------------------------------------

_FINGERPRINTS: dict[tuple[str, int, int], bytes] = {}


def vocab_fingerprint(path) -> bytes:
    """A hash of every token's text and kind, in id order, read by llama.cpp from the file's vocabulary alone
    (what the draft guesses is a token id the target reads: the ids must mean the same text)."""
    import hashlib
    import os

    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    llamacpp.init()
    mp = L.llama_model_default_params()
    mp.vocab_only = True
    with llamacpp.capture_log():
        model = L.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise EdgeError(f"llama.cpp could not read the vocabulary of {path}: {llamacpp.last_error() or 'unknown error'}")
    try:
        h = hashlib.sha256()
        vocab = L.llama_model_get_vocab(model)
        n = L.llama_vocab_n_tokens(vocab)
        h.update(n.to_bytes(8, "little"))
        for i in range(n):
            h.update(L.llama_vocab_get_text(vocab, i) or b"")
            h.update(b"\0" + int(L.llama_vocab_get_attr(vocab, i)).to_bytes(4, "little"))
    finally:
        L.llama_model_free(model)
    _FINGERPRINTS[key] = h.digest()
    return _FINGERPRINTS[key]


def check_vocabulary(target_path, draft_path) -> None:
    """Refuse a draft whose token ids mean other text than the target's."""
    if vocab_fingerprint(target_path) != vocab_fingerprint(draft_path):
        raise UsageError(
            f"--draft {draft_path}: its vocabulary differs from the model's (token ids would mean other text); "
            "a draft must come from the same tokenizer"
        )

