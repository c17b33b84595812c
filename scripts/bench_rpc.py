"""Tokens/s of `edgellm run` here vs split over llama.cpp RPC workers on 127.0.0.1: the cost of the protocol itself.

    python scripts/bench_rpc.py [MODEL] [--reps 3] [-n 128] [--threads 1]

Starts two `edgellm worker`s (needs the RPC build: LLAMACPP_RPC=1 scripts/llamacpp_tools.sh), then runs the same
greedy prompt with every layer here, half of them on the workers, and all of them there; prints the median
decode and prompt tokens/s of each and whether the replies are identical.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
from pathlib import Path

EDGELLM = str(Path(sys.executable).parent / "edgellm")
PROMPT = "Write a short poem about the sea."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: list[str], args, extra: list[str]) -> dict:
    cmd = [EDGELLM, "run", *model, "-p", PROMPT, "--temp", "0", "-n", str(args.n), "--ctx", "1024", "-t", str(args.threads),
           "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(r.stderr.strip())
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    model = [args.model] if args.model else []
    ports = [free_port(), free_port()]
    workers = []
    try:
        for port in ports:
            p = subprocess.Popen([EDGELLM, "worker", "--port", str(port), "--threads", str(args.threads)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            workers.append(p)
            if "lending" not in p.stdout.readline():
                sys.exit("a worker did not start")
        rpc = ",".join(f"127.0.0.1:{p}" for p in ports)
        n_layers = run(model, args, [])["engine"]["n_layers"]
        setups = {"local": [], f"{(n_layers + 1) // 2} layers on 2 workers": ["--rpc", rpc, "--ngl", str((n_layers + 1) // 2)],
                  f"all {n_layers + 1} on 2 workers": ["--rpc", rpc, "--ngl", str(n_layers + 1)]}
        texts = {}
        print(f"{'setup':<28} {'decode tok/s':>12} {'prompt tok/s':>12}")
        for name, extra in setups.items():
            outs = [run(model, args, extra) for _ in range(args.reps)]
            texts[name] = outs[0]["text"]
            gen = statistics.median(o["stats"]["gen_tps"] for o in outs)
            pp = statistics.median(o["stats"]["prompt_tps"] for o in outs)
            print(f"{name:<28} {gen:>12.1f} {pp:>12.1f}")
        print("replies identical:", len(set(texts.values())) == 1)
    finally:
        for p in workers:
            p.terminate()
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
