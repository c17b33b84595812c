#!/usr/bin/env python3
"""edgellm bench against llama.cpp's own llama-bench and llama-perplexity, same files and threads, one run.

Prints, per file: pp512 and tg128 tokens/s from both and their ratio (target 0.95-1.05), and perplexity on
the same text and context from both (target within 1%).

    python scripts/bench_vs_llamacpp.py [FILE.gguf ...] [--threads N] [-r 5] [--text FILE] [--json OUT]

With no file: the default SmolLM2 Q4_1. The llama.cpp tools are built by scripts/llamacpp_tools.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from edgellm.bench.run import BenchConfig, default_quality_text, run_bench
from edgellm.store.models import resolve_model
from edgellm.engine.quality import perplexity

HERE = Path(__file__).resolve().parent


def tools_root() -> Path:
    out = subprocess.run([str(HERE / "llamacpp_tools.sh")], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable})
    return Path(out.stdout.strip().splitlines()[-1])


def llama_bench(tool: Path, path: Path, threads: int, reps: int, p: int, n: int, ngl: int) -> dict[str, float]:
    out = subprocess.run([str(tool), "-m", str(path), "-t", str(threads), "-r", str(reps), "-p", str(p), "-n", str(n),
                          "-ngl", str(ngl), "-o", "json"], check=True, capture_output=True, text=True)
    rows = json.loads(out.stdout)
    return {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in rows}


def llama_perplexity(tool: Path, path: Path, text_file: Path, threads: int, n_ctx: int) -> float:
    out = subprocess.run([str(tool), "-m", str(path), "-f", str(text_file), "-c", str(n_ctx), "-t", str(threads),
                          "-ngl", "0"], check=True, capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    if not m:
        raise RuntimeError("llama-perplexity printed no final estimate")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--text", type=Path, help="perplexity text [default: edgellm's built-in text]")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--ngl", type=int, default=0, help="GPU layers for both [default: 0, CPU only]")
    ap.add_argument("--no-ppl", action="store_true", help="speed only (random-weight files have no perplexity to compare)")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()

    bin_dir = tools_root() / "build" / "bin"
    text = args.text.read_text() if args.text else default_quality_text()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
        text_file = Path(f.name)

    rows = []
    refs = [resolve_model(str(p)) for p in args.files] or [resolve_model(None)]
    for ref in refs:
        for mf in ref.files:
            cfg = BenchConfig(n_prompt=512, n_gen=128, reps=args.reps, ngl=args.ngl, threads=args.threads)
            ours = run_bench(ref, cfg, [mf.level]).results[0]
            if not ours.ok:
                print(f"{mf.path.name}: edgellm failed: {ours.error}", file=sys.stderr)
                continue
            theirs = llama_bench(bin_dir / "llama-bench", mf.path, args.threads, args.reps, 512, 128, args.ngl)
            ppl_ours = ppl_theirs = float("nan")
            if not args.no_ppl:
                ppl_ours = perplexity(mf.path, text, n_ctx=args.ctx, n_threads=args.threads).ppl
                ppl_theirs = llama_perplexity(bin_dir / "llama-perplexity", mf.path, text_file, args.threads, args.ctx)
            rows.append({
                "file": mf.path.name, "threads": args.threads, "ngl": args.ngl,
                "pp512": {"edgellm": ours.pp.mean, "llama_bench": theirs["pp"], "ratio": ours.pp.mean / theirs["pp"]},
                "tg128": {"edgellm": ours.tg.mean, "llama_bench": theirs["tg"], "ratio": ours.tg.mean / theirs["tg"]},
                "ppl": {"edgellm": ppl_ours, "llama_perplexity": ppl_theirs, "ratio": ppl_ours / ppl_theirs},
            })
    text_file.unlink()

    print(f"{'file':40} {'pp512 ours/lc':>20} {'ratio':>6} {'tg128 ours/lc':>20} {'ratio':>6} {'PPL ours/lc':>18} {'ratio':>7}")
    for r in rows:
        pp, tg, ppl = r["pp512"], r["tg128"], r["ppl"]
        print(f"{r['file']:40} {pp['edgellm']:9.1f}/{pp['llama_bench']:<9.1f} {pp['ratio']:6.3f} "
              f"{tg['edgellm']:9.1f}/{tg['llama_bench']:<9.1f} {tg['ratio']:6.3f} "
              f"{ppl['edgellm']:8.4f}/{ppl['llama_perplexity']:<8.4f} {ppl['ratio']:7.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
