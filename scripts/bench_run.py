#!/usr/bin/env python3
"""edgellm's runtime against llama.cpp's own llama-bench: same file, same threads, one run.

For each GGUF: generation tokens/s of the edgellm Engine (native sampler chain, 128 tokens) against
llama-bench tg128 (which samples nothing: the "greedy" column leaves the sampler's pass over the vocabulary out), and prompt tokens/s (a 512-token prompt) against pp512. The two are interleaved rep
by rep so load from other processes hits both alike; the median of the per-rep ratios is reported.
Target: ratio >= 0.97. On a shared machine prefer -t 1: with every core busy, one preempted thread
stalls the others at each barrier and both sides' speeds scatter tenfold.

    .venv/bin/python scripts/bench_run.py                  # SmolLM2 Q4_1, Q4_K_M and F16
    .venv/bin/python scripts/bench_run.py model.gguf -t 4 -r 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the offline SmolLM2 fixtures


def tools_root() -> Path:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "llamacpp_tools.sh")], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHON": sys.executable})
    return Path(out.stdout.strip().splitlines()[-1])


def default_files(bin_dir: Path) -> list[Path]:
    """SmolLM2 as shipped (Q4_1), converted to F16 by edgellm, and that F16 quantized to Q4_K_M by llama.cpp."""
    from fixtures import cache_root, smollm2_converted_gguf, smollm2_gguf

    f16 = smollm2_converted_gguf("f16")
    q4km = cache_root() / "bench" / "smollm2-Q4_K_M.gguf"
    if not q4km.exists():
        q4km.parent.mkdir(parents=True, exist_ok=True)
        tmp = q4km.with_suffix(".part")
        subprocess.run([str(bin_dir / "llama-quantize"), str(f16), str(tmp), "Q4_K_M"], check=True, capture_output=True)
        tmp.rename(q4km)
    return [smollm2_gguf(), q4km, f16]


def llama_bench(bin_dir: Path, path: Path, threads: int) -> dict[str, float]:
    """One llama-bench repetition of pp512 and tg128 (tokens/s), CPU only, its defaults otherwise."""
    out = subprocess.run(
        [str(bin_dir / "llama-bench"), "-m", str(path), "-t", str(threads), "-p", "512", "-n", "128", "-r", "1", "-ngl", "0", "-o", "json"],
        capture_output=True, text=True, check=True,
    )
    rows = json.loads(out.stdout)
    return {"pp": next(r["avg_ts"] for r in rows if r["n_prompt"]), "tg": next(r["avg_ts"] for r in rows if r["n_gen"])}


def edgellm_rep(engine, rep: int) -> dict[str, float]:
    """pp: 512 random tokens into an empty cache; tg: 128 tokens after a short prompt, sampled natively."""
    import random

    from edgellm.engine.runtime import Sampling

    rng = random.Random(rep)
    engine.reset()
    prompt = [rng.randrange(engine.n_vocab) for _ in range(512)]
    for _ in engine.stream_tokens(prompt, Sampling(temperature=0, max_tokens=1)):
        pass
    pp = engine.last_stats.prompt_tps
    engine.reset()
    story = engine.tokenize(f"Chapter {rep + 2}. Once upon a time, in a small village by the sea, there lived")
    for _ in engine.stream_tokens(story, Sampling(max_tokens=129, seed=rep, ignore_eos=True)):
        pass
    s = engine.last_stats
    engine.reset()  # greedy: the sampler's cost over the whole vocabulary left out, as llama-bench leaves it out
    for _ in engine.stream_tokens(story, Sampling(temperature=0, max_tokens=129, ignore_eos=True)):
        pass
    return {"pp": pp, "tg": s.gen_tps, "gen_tokens": s.gen_tokens, "tg_greedy": engine.last_stats.gen_tps}


def bench_file(bin_dir: Path, path: Path, threads: int, reps: int) -> dict:
    from edgellm.engine.launch import open_engine

    with open_engine(path, ctx=2048, ngl=0, threads=threads) as engine:
        edgellm_rep(engine, -1)  # warm-up, as llama-bench does
        ours, theirs = [], []
        for rep in range(reps):
            theirs.append(llama_bench(bin_dir, path, threads))
            ours.append(edgellm_rep(engine, rep))
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    best = lambda rows, k: max(r[k] for r in rows)  # noqa: E731 - the rep least slowed by other processes
    return {
        "file": path.name,
        "threads": threads,
        "reps": reps,
        "edgellm_pp_tps": med(ours, "pp"),
        "llama_bench_pp512_tps": med(theirs, "pp"),
        "edgellm_tg_tps": med(ours, "tg"),
        "llama_bench_tg128_tps": med(theirs, "tg"),
        # each rep's ratio, then the median: back-to-back pairs see about the same load from other processes
        "pp_ratio": statistics.median(o["pp"] / t["pp"] for o, t in zip(ours, theirs)),
        "tg_ratio": statistics.median(o["tg"] / t["tg"] for o, t in zip(ours, theirs)),
        "tg_greedy_ratio": statistics.median(o["tg_greedy"] / t["tg"] for o, t in zip(ours, theirs)),
        "pp_ratio_best": best(ours, "pp") / best(theirs, "pp"),
        "tg_ratio_best": best(ours, "tg") / best(theirs, "tg"),
        "samples": {"edgellm": ours, "llama_bench": theirs},
    }


def main() -> int:
    from edgellm.engine.llamacpp import default_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="GGUF files (default: SmolLM2 Q4_1, Q4_K_M, F16)")
    ap.add_argument("-t", "--threads", type=int, default=default_threads())
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    bin_dir = tools_root() / "build" / "bin"
    results = [bench_file(bin_dir, f, args.threads, args.reps) for f in (args.files or default_files(bin_dir))]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'file':34} {'pp edgellm':>11} {'pp512':>9} {'ratio':>6} {'best':>6}   {'tg edgellm':>11} {'tg128':>9} {'ratio':>6} {'best':>6} "
          f"{'greedy':>6}")
    for r in results:
        print(
            f"{r['file']:34} {r['edgellm_pp_tps']:11.1f} {r['llama_bench_pp512_tps']:9.1f} {r['pp_ratio']:6.3f} {r['pp_ratio_best']:6.3f}   "
            f"{r['edgellm_tg_tps']:11.1f} {r['llama_bench_tg128_tps']:9.1f} {r['tg_ratio']:6.3f} {r['tg_ratio_best']:6.3f} "
            f"{r['tg_greedy_ratio']:6.3f}"
        )
    print(f"(tokens/s: medians of {args.reps} interleaved reps; ratio: median of the per-rep ratios; 'best': each side's "
          f"fastest rep; {args.threads} threads, CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
