#!/usr/bin/env python3
"""Speculative decoding vs plain decoding, same engine, alternated so both see the same machine load.

Tasks: `repeat` (rewrite a given code file with one change: the reply mostly repeats its input) and `chat`
(free-form text). Each round runs plain, then each speculation mode, greedy, from a cleared cache; the speed is
generated tokens per second of the reply (prompt evaluation excluded) and the ratio is per round, then the median.
The texts of plain and speculative replies are compared too.

    .venv/bin/python scripts/bench_speculate.py [--model PATH] [--draft ngram] [--draft MODEL] [--rounds 5]
        [--tokens 256] [--threads N] [--task repeat --task chat] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from edgellm.engine.draft import choose, speculation
from edgellm.engine.launch import plan_model
from edgellm.engine.measure import SPEC_TASKS
from edgellm.engine.runtime import Engine, Sampling

TASKS = SPEC_TASKS


def one(engine: Engine, prompt: str, tokens: int) -> tuple[str, object]:
    engine.reset()
    s = Sampling(temperature=0, repeat_penalty=1.0, max_tokens=tokens)
    text = "".join(engine.stream_chat([{"role": "user", "content": prompt}], s))
    return text, engine.last_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--draft", action="append", help="ngram, auto or a draft model (repeatable; default ngram)")
    ap.add_argument("--task", action="append", choices=sorted(TASKS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    plan = plan_model(args.model, ctx=4096, threads=args.threads)
    results = []
    with Engine.load(plan) as engine:
        specs = {}
        for mode in args.draft or ["ngram"]:
            choice = choose(plan, mode)
            specs[mode] = (speculation(choice), choice.notes)
        for task in args.task or ["repeat", "chat"]:
            prompt = TASKS[task]
            rows: dict[str, list] = {m: [] for m in specs}
            for _ in range(args.rounds):
                engine.use_speculation(None)
                plain_text, plain = one(engine, prompt, args.tokens)
                for mode, (spec, _) in specs.items():
                    engine.speculation = None  # keep the loaded draft for the next round
                    engine.use_speculation(spec)
                    text, st = one(engine, prompt, args.tokens)
                    rows[mode].append((st.gen_tps / plain.gen_tps, st, text == plain_text, plain.gen_tps))
                    engine.speculation = None
            for mode, r in rows.items():
                st = r[-1][1]
                results.append({
                    "task": task, "draft": mode, "what": specs[mode][0].name if specs[mode][0] else "off",
                    "speedup": round(statistics.median(x[0] for x in r), 3),
                    "speedups": [round(x[0], 3) for x in r],
                    "plain_tps": round(statistics.median(x[3] for x in r), 1),
                    "acceptance": round(statistics.median(x[1].acceptance for x in r), 3),
                    "tokens_per_step": round(statistics.median(x[1].tokens_per_step for x in r), 2),
                    "spec_steps": st.spec_steps, "gen_tokens": st.gen_tokens,
                    "same_text": all(x[2] for x in r),
                })
        for spec, _ in specs.values():
            if spec is not None:
                spec.close()
    if args.json:
        print(json.dumps({"model": str(plan.path), "threads": plan.n_threads, "results": results}, indent=2))
        return
    print(f"{plan.path.name}, {plan.n_threads} thread(s), {args.rounds} rounds, {args.tokens} tokens, greedy")
    for r in results:
        print(f"{r['task']:7} {r['what'][:24]:24} x{r['speedup']:.2f} (rounds {r['speedups']}) plain {r['plain_tps']} tok/s · "
              f"acceptance {r['acceptance']:.0%} · {r['tokens_per_step']} tokens/step · same text: {r['same_text']}")


if __name__ == "__main__":
    main()
