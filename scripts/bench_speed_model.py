#!/usr/bin/env python3
"""How close the planner's predicted tokens/s come to llama-bench, on every level of the packages given.

For each file: llama-bench (the tool built by scripts/llamacpp_tools.sh) measures decode (tg) and prompt (pp)
tokens/s on the CPU at the given threads; edgellm.plan.speed predicts both for this machine. Prints measured,
predicted and their ratio per level (target: predicted within ±25% of measured), and with --fit the per-type
decode costs (seconds per GB at one thread) that would fit these measurements best.

    .venv/bin/python scripts/bench_speed_model.py PACKAGE [PACKAGE...] [--threads 1,2] [--fit]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.25


def llama_bench() -> Path:
    out = subprocess.run(["bash", str(ROOT / "scripts/llamacpp_tools.sh")], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable})
    return Path(out.stdout.strip().splitlines()[-1]) / "build/bin/llama-bench"


def measure(tool: Path, path: Path, threads: int, reps: int) -> tuple[float, float]:
    """(decode tok/s, prompt tok/s) from llama-bench: tg 32 and pp 128."""
    cmd = [str(tool), "-m", str(path), "-t", str(threads), "-p", "128", "-n", "32", "-r", str(reps), "-o", "csv"]
    rows = list(csv.DictReader(io.StringIO(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)))
    by = {("tg" if int(r["n_gen"]) else "pp"): float(r["avg_ts"]) for r in rows}
    return by["tg"], by["pp"]


def decode_features(info) -> tuple[int, Counter]:
    """Layers and GB per tensor type a token reads (as edgellm.plan.speed counts them)."""
    from edgellm.plan.speed import _per_token_tensors

    by = Counter()
    for qtype, nbytes, _w, _layer, _e in _per_token_tensors(info):
        by[qtype] += nbytes / 1e9
    return info.n_layers + 1, by


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fit", action="store_true", help="print the per-type costs that fit best (one thread; a quiet machine)")
    args = ap.parse_args()

    from edgellm.formats.gguf_info import read_gguf
    from edgellm.plan.hardware import detect
    from edgellm.plan.speed import measure_machine, predict

    hw = detect()
    machine = measure_machine(hw.cpu_cores)
    print(f"machine: {hw.cpu_name}, {hw.cpu_cores} cores; memory read speed {machine.memory_bps / 1e9:.1f} GB/s; "
          f"load average {os.getloadavg()[0]:.1f}")
    tool = llama_bench()
    files = [f for p in args.packages for f in (sorted(p.glob("*.gguf")) if p.is_dir() else [p]) if f.name != "imatrix.gguf"]
    if args.fit:
        return fit(tool, files, args.reps, machine)
    worst = 0.0
    print(f"{'file':34s} {'t':>2s} {'tg meas':>8s} {'pred':>7s} {'ratio':>6s}   {'pp meas':>8s} {'pred':>7s} {'ratio':>6s}")
    for threads in (int(t) for t in args.threads.split(",")):
        for f in files:
            info = read_gguf(f)
            tg, pp = measure(tool, f, threads, args.reps)
            s = predict(info, machine, threads)
            r_tg, r_pp = s.decode_tps / tg, s.prompt_tps / pp
            worst = max(worst, abs(r_tg - 1), abs(r_pp - 1))
            print(f"{f.name:34s} {threads:2d} {tg:8.1f} {s.decode_tps:7.1f} {r_tg:6.2f}   {pp:8.1f} {s.prompt_tps:7.1f} {r_pp:6.2f}", flush=True)
    print(f"worst error: {worst:.0%} (target <= {TARGET:.0%}) {'OK' if worst <= TARGET else 'MISSED'}")
    return 0 if worst <= TARGET else 1


def fit(tool: Path, files: list[Path], reps: int, machine) -> int:
    """Least-squares per-type costs from llama-bench at one thread (wall clock: run it on a quiet machine)."""
    from edgellm.formats.gguf_info import read_gguf

    ones = []
    for f in files:
        tg, pp = measure(tool, f, 1, reps)
        ones.append((read_gguf(f), tg, pp))
        print(f"  {f.name:34s} one thread: tg {tg:7.1f} tok/s  pp {pp:7.1f} tok/s", flush=True)
    feats = [decode_features(info) for info, _, _ in ones]
    types = sorted({k for _, by in feats for k in by} - {"F32"})  # norms: too few bytes to fit
    x = np.array([[n] + [by[k] for k in types] for n, by in feats])
    coef, *_ = np.linalg.lstsq(x, np.array([1 / tg for _, tg, _ in ones]), rcond=None)
    print(f"one thread on this machine (memory read speed {machine.memory_bps / 1e9:.1f} GB/s):")
    print(f"  decode: per layer {coef[0] * 1e6:.1f} us; s/GB: " + ", ".join(f"{k} {c:.4f}" for k, c in zip(types, coef[1:])))
    xw = np.array([[info.n_layers * info.n_embd / 1e9] + [sum(w for q, _, w, _, _ in _tensors(info) if q == k) / 1e9 for k in types]
                   for info, _, _ in ones])
    cw, *_ = np.linalg.lstsq(xw, np.array([1 / pp for _, _, pp in ones]), rcond=None)
    print(f"  prompt: per layer and n_embd {cw[0]:.1f} ns; ns/weight: " + ", ".join(f"{k} {c:.4f}" for k, c in zip(types, cw[1:])))
    return 0


def _tensors(info):
    from edgellm.plan.speed import _per_token_tensors

    return _per_token_tensors(info)


if __name__ == "__main__":
    sys.exit(main())
