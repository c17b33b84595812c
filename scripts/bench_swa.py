#!/usr/bin/env python3
"""Time to first token of a chat's later turns on a sliding-window model (Gemma 2/3), with llama.cpp's
window-sized cache for the sliding layers (`swa_full` off, what edgellm runs) against the full-size one.

Two cases, each after a long first turn that outgrows the window cache:
- next turn: the prompt extends the conversation, so both keep the cache and evaluate only the new turn;
- edited first message: the prompt differs halfway through the first message; the full-size cache still
  holds the prefix before the difference, the window-sized one no longer holds the window before it and
  must start over.
Each setting loads the model itself and drives it through edgellm's Engine (its cache reuse and fallback).
The KV cache size of each setting is printed too (llama.cpp's own numbers).

    .venv/bin/python scripts/bench_swa.py gemma-3-270m-q4_k_m.gguf [-t 2] [-r 3] [--ctx 8192]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import llama_cpp as L

from edgellm.engine import llamacpp
from edgellm.plan.memory import MIB, llama_dry_run
from edgellm.engine.runtime import N_BATCH, N_UBATCH, Engine, EngineInfo, Sampling

GREEDY = Sampling(temperature=0, max_tokens=16, repeat_penalty=1.0)


def load(path: Path, n_ctx: int, threads: int, swa_full: bool) -> Engine:
    llamacpp.init()
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch = n_ctx, min(N_BATCH, n_ctx)
    cp.n_ubatch = min(N_UBATCH, cp.n_batch)
    cp.n_threads = cp.n_threads_batch = threads
    cp.swa_full = swa_full
    ctx = L.llama_init_from_model(model, cp)
    if not model or not ctx:
        sys.exit(f"llama.cpp could not load {path}: {llamacpp.last_error()}")
    info = EngineInfo(path.stem, "", path, L.llama_model_n_layer(model), 0, L.llama_n_ctx(ctx), threads, "f16", 0.0)
    return Engine(model, ctx, info)


def ttft(engine: Engine, messages: list[dict]) -> tuple[float, int]:
    for _ in engine.stream_chat(messages, GREEDY):
        pass
    stats = engine.last_stats
    return stats.ttft_s, stats.prompt_eval_tokens


def run(path: Path, n_ctx: int, threads: int, swa_full: bool, words: int) -> dict[str, tuple[float, int]]:
    lines = [f"Line {i}: the caravan crossed dune {i % 17} before noon." for i in range(words // 10)]
    story = " ".join(lines)
    first = [{"role": "user", "content": f"Summarise this log.\n{story}"}]
    with load(path, n_ctx, threads, swa_full) as e:
        reply = "".join(e.stream_chat(first, GREEDY))
        first_tokens = e.last_stats.prompt_tokens
        follow = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Which dune came last?"}]
        out = {"next turn": ttft(e, follow)}
        e.reset()
        ttft(e, first)  # the same long first turn again, then its first message edited
        lines[len(lines) // 2] = "Line 0: a storm stopped the caravan."  # halfway: beyond the window cache's reach
        edited = [{"role": "user", "content": "Summarise this log.\n" + " ".join(lines)}]
        out["edited first message"] = ttft(e, edited)
    out["first turn tokens"] = (0.0, first_tokens)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--words", type=int, default=1000, help="length of the first message (words)")
    args = ap.parse_args()
    settings = (False, True)
    reps: dict[bool, list] = {f: [] for f in settings}
    for _ in range(args.reps):  # interleaved, so load from other processes hits both settings alike
        for swa_full in settings:
            reps[swa_full].append(run(args.gguf, args.ctx, args.threads, swa_full, args.words))
    for swa_full in settings:
        kv = llama_dry_run(args.gguf, args.ctx, swa_full=swa_full).kv
        done = reps[swa_full]
        print(f"swa_full={str(swa_full).lower():5}  KV cache {kv / MIB:7.1f} MiB  first turn {done[0]['first turn tokens'][1]} tokens")
        for case in ("next turn", "edited first message"):
            times = [r[case][0] for r in done]
            print(f"  {case:22} TTFT median {statistics.median(times) * 1000:8.1f} ms "
                  f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}); prompt tokens evaluated {done[0][case][1]}")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    sys.exit(rc)
