"""Tokens per second of a loaded engine, measured the way llama-bench measures them (`bench` and `tune`), and
`edgellm tune`'s sweep: the llama.cpp settings that run one model file fastest on this machine, found by measuring.

Swept one after the other, each sweep keeping the winner of the ones before:

- threads: 1 up to every logical CPU (llama.cpp's threads wait for each other at every step, so the most
  cores is not always the fastest);
- micro-batch (n_ubatch): 128, 256 or 512 prompt tokens per step (never more than the planner counted);
- KV cache type, only with `kv_quant`: q8_0 halves the cache for a small quality cost (f16 otherwise).

Flash attention is left as llama.cpp's "auto" (on for the CPU and CUDA), which the memory planner counts on.
Each candidate is measured as `bench` measures (prompt and generation tokens/s, short runs) and scored by the
time of a typical chat turn (`edgellm.plan.tune`, which keeps the winner).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import replace
from typing import Callable

from ..plan.tune import UBATCHES, Settings, Trial, TuneResult, save


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


def tune(plan, *, n_prompt: int = 128, n_gen: int = 32, reps: int = 2, kv_quant: bool = False,
         on_trial: Callable[[Trial], None] | None = None) -> TuneResult:
    """Measure the sweeps on the file `plan` chose (its context and GPU layers kept) and store the winner."""
    import psutil

    from ..plan.hardware import detect
    from .runtime import Engine

    hw = detect()
    measured: dict[Settings, Trial] = {}

    def trial(s: Settings) -> Trial:
        if s not in measured:
            p = replace(plan, n_threads=s.threads, n_ubatch=s.n_ubatch, kv_type=s.kv_type, adaptive_threads=0)
            with Engine.load(p) as engine:
                speeds = pp_tg(engine, n_prompt, n_gen, reps)
            measured[s] = Trial(s, statistics.median(speeds["pp"]), statistics.median(speeds["tg"]))
            if on_trial:
                on_trial(measured[s])
        return measured[s]

    baseline = trial(Settings(hw.cpu_cores, 512, "f16"))
    logical = psutil.cpu_count(logical=True) or hw.cpu_cores
    best = min((trial(Settings(t, 512, "f16")) for t in range(1, logical + 1)), key=lambda t: t.turn_s)
    best = min([best] + [trial(replace(best.settings, n_ubatch=u)) for u in UBATCHES], key=lambda t: t.turn_s)
    if kv_quant:
        best = min([best, trial(replace(best.settings, kv_type="q8_0"))], key=lambda t: t.turn_s)
    result = TuneResult(plan.path, plan.level, hw.machine_id, baseline, best, tuple(measured.values()))
    save(result)
    return result


# --- speculative decoding ------------------------------------------------------------------------------------

# A code file small models copy faithfully: the "repeat" task rewrites it with one change, so most of the reply
# repeats the prompt (n-gram lookup's case); "chat" is free-form text (where speculation must not cost).
CODE_FILE = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def factorial(n):
    """Return n factorial."""
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result


def is_prime(n):
    """Return True if n is a prime number."""
    if n < 2:
        return False
    for i in range(2, int(n ** 0.5) + 1):
        if n % i == 0:
            return False
    return True


def gcd(a, b):
    """Return the greatest common divisor of a and b."""
    while b:
        a, b = b, a % b
    return a
'''
SPEC_TASKS = {
    "repeat": "Copy the following code, replacing `result` with `product`:\n\n```python\n" + CODE_FILE + "```",
    "chat": "Write a short story about a lighthouse keeper who finds a map in a bottle.",
}


def speculation_speedup(engine, spec, task: str, n_gen: int, reps: int) -> dict:
    """Generation tokens/s with `spec` over plain decoding on SPEC_TASKS[task], greedy, `reps` pairs of replies
    alternated (both see the same machine load): the median ratio, acceptance rate and tokens per checking step,
    and whether every reply was the plain one's text."""
    from .runtime import Sampling

    s = Sampling(temperature=0, repeat_penalty=1.0, max_tokens=n_gen)
    messages = [{"role": "user", "content": SPEC_TASKS[task]}]
    ratios, accepts, per_step, same = [], [], [], True
    kept = engine.speculation
    try:
        for _ in range(reps):
            texts, speeds = [], []
            for use in (None, spec):
                engine.use_speculation(use, close_previous=False)
                engine.reset()
                texts.append("".join(engine.stream_chat(messages, s)))
                speeds.append(engine.last_stats.gen_tps)
            ratios.append(speeds[1] / speeds[0] if speeds[0] else 0.0)
            accepts.append(engine.last_stats.acceptance)
            per_step.append(engine.last_stats.tokens_per_step)
            same = same and texts[0] == texts[1]
    finally:
        engine.use_speculation(kept, close_previous=False)
    return {"task": task, "draft": spec.name, "speedup": round(statistics.median(ratios), 3),
            "acceptance": round(statistics.median(accepts), 3), "tokens_per_step": round(statistics.median(per_step), 2),
            "same_text": same}
