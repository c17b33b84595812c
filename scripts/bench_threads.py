#!/usr/bin/env python3
"""Decode speed of `edgellm run`'s default threads against llama-bench's default threads, on an idle machine
and with another program keeping one core busy (`python -c "while True: pass"`, as a build or a browser would).

    python scripts/bench_threads.py [FILE.gguf] [-r 3] [-n 128] [--json OUT]

Alternates the two, round after round, and prints each side's mean tg tok/s and the ratio per condition
(targets: >= 1.8 with a busy core, >= 0.97 idle). With no file: the default SmolLM2 Q4_1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_llamacpp import tools_root  # noqa: E402

from edgellm.engine.launch import open_engine  # noqa: E402
from edgellm.store.models import resolve_model  # noqa: E402
from edgellm.engine.sampling import Sampling  # noqa: E402


def edgellm_tg(path: Path, n: int) -> tuple[float, int]:
    with open_engine(str(path), ctx=512) as e:  # threads: what `edgellm run` chooses now
        list(e.stream_prompt("Once upon a time", Sampling(max_tokens=n, ignore_eos=True, seed=1)))
        return e.last_stats.gen_tps, e.info.n_threads


def llama_bench_tg(tool: Path, path: Path, n: int) -> float:
    out = subprocess.run([str(tool), "-m", str(path), "-p", "0", "-n", str(n), "-r", "1", "-ngl", "0", "-o", "json"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)[0]["avg_ts"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    path = Path(args.file) if args.file else resolve_model(None).files[0].path
    tool = tools_root() / "build" / "bin" / "llama-bench"
    rows = {}
    for condition in ("idle", "one core busy"):
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition != "idle" else None
        ours, theirs, threads = [], [], set()
        try:
            for _ in range(args.rounds):
                tps, t = edgellm_tg(path, args.n)
                ours.append(tps)
                threads.add(t)
                theirs.append(llama_bench_tg(tool, path, args.n))
        finally:
            if spin:
                spin.kill()
                spin.wait()
        rows[condition] = {"edgellm": statistics.fmean(ours), "llama_bench": statistics.fmean(theirs),
                           "ratio": statistics.fmean(ours) / statistics.fmean(theirs), "edgellm_threads": sorted(threads),
                           "edgellm_samples": ours, "llama_bench_samples": theirs}
    print(f"{path.name}: tg{args.n}, {args.rounds} alternated rounds")
    print(f"{'condition':14} {'edgellm':>9} {'threads':>8} {'llama-bench':>12} {'ratio':>6}")
    for condition, r in rows.items():
        print(f"{condition:14} {r['edgellm']:9.1f} {','.join(map(str, r['edgellm_threads'])):>8} {r['llama_bench']:12.1f} {r['ratio']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
