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
