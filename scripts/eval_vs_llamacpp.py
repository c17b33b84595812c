"""Wall time of `edgellm eval` against llama-perplexity on the same GGUF and task file, runs alternated.

    python scripts/eval_vs_llamacpp.py MODEL.gguf --hellaswag FILE [--tasks N] [--reps 3] [--threads 2]
    python scripts/eval_vs_llamacpp.py MODEL.gguf --winogrande FILE ...

Each run is a whole process (start, load, score, exit) timed from outside; the two tools take turns so a
busy neighbour slows both alike. Prints each pair, the median ratio (edgellm / llama-perplexity) and whether
the printed accuracies agree.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

EDGELLM = Path(sys.executable).parent / "edgellm"


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{done.stderr[-2000:]}")
    return wall, done.stdout + done.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    kind = ap.add_mutually_exclusive_group(required=True)
    kind.add_argument("--hellaswag")
    kind.add_argument("--winogrande")
    kind.add_argument("--multiple-choice")
    ap.add_argument("--tasks", type=int)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perplexity", help="llama-perplexity binary [default: scripts/llamacpp_tools.sh's]")
    a = ap.parse_args()
    mode, path = next((m, p) for m, p in (("hellaswag", a.hellaswag), ("winogrande", a.winogrande),
                                          ("multiple-choice", a.multiple_choice)) if p)
    binary = a.perplexity or str(Path(subprocess.run(["bash", str(Path(__file__).parent / "llamacpp_tools.sh")],
                                                      capture_output=True, text=True, check=True,
                                                      env={**os.environ, "PYTHON": sys.executable}).stdout.split()[-1])
                                 / "build" / "bin" / "llama-perplexity")
    n = [f"--{mode}-tasks", str(a.tasks)] if a.tasks is not None else []
    theirs_cmd = [binary, "-m", a.model, "-f", path, f"--{mode}", "-t", str(a.threads), *n]
    ours_cmd = [str(EDGELLM), "eval", a.model, f"--{mode}", path, "--threads", str(a.threads), "--json", *n]
    ratios = []
    for rep in range(a.reps):
        pair = [timed(ours_cmd), timed(theirs_cmd)] if rep % 2 == 0 else list(reversed([timed(theirs_cmd), timed(ours_cmd)]))
        (t_ours, out_ours), (t_theirs, out_theirs) = pair
        ratios.append(t_ours / t_theirs)
        print(f"run {rep + 1}: edgellm {t_ours:.2f} s, llama-perplexity {t_theirs:.2f} s, ratio {ratios[-1]:.3f}")
    acc = re.search(r'"accuracy": ([\d.e-]+)', out_ours)
    last = re.findall(r"^\d+\t(\d+\.\d+)", out_theirs, re.M)
    print(f"median ratio {statistics.median(ratios):.3f}; edgellm accuracy {float(acc.group(1)) * 100 if acc else None}, "
          f"llama-perplexity's last line {last[-1] if last else None}")


if __name__ == "__main__":
    main()
