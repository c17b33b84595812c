"""Tokens per second of a loaded engine, measured the way llama-bench measures them (`bench` and `tune`)."""

from __future__ import annotations

import random
import time

def pp_tg(engine, n_prompt: int, n_gen: int, reps: int) -> dict[str, list[float]]:
    """Prompt and generation tokens/s of a loaded engine, llama-bench's way: {"pp": [...], "tg": [...]}, `reps`
    samples each after one warm-up (a test with 0 tokens is left out)."""
    from .runtime import Sampling

    n_vocab = engine.n_vocab
    rng = random.Random(0)
    bos = engine.tokenize("", add_bos=True) or [0]

    def pp() -> float:
        tokens = bos + [rng.randrange(n_vocab) for _ in range(n_prompt - len(bos))]
        engine.reset()
        t0 = time.perf_counter()
        engine.evaluate(tokens)
        return n_prompt / (time.perf_counter() - t0)

    greedy = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=n_gen, ignore_eos=True)

    def tg() -> float:
        # A 1-token prompt, then n_gen - 1 more single-token decodes: n_gen decodes, as in llama-bench's tg.
        engine.reset()
        t0 = time.perf_counter()
        for _ in engine.stream_tokens(bos[:1], greedy):
            pass
        return n_gen / (time.perf_counter() - t0)

    out: dict[str, list[float]] = {}
    for name, test, n in (("pp", pp, n_prompt), ("tg", tg, n_gen)):
        if n > 0:
            test()  # warm-up
            out[name] = [test() for _ in range(reps)]
    engine.reset()
    return out
