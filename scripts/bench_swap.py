#!/usr/bin/env python3
"""A model swap in `edgellm serve` (store mode) against a cold `edgellm run` of the same model.

Two models go into a fresh store; the server serves the store with a RAM budget that holds only one of them, so
each request to the other model unloads the first and loads the second. The swap's cost is the time from sending
the request to its first streamed token (unload, plan, load, prompt). A cold run's is what `edgellm run` reports
for the same prompt, context and threads: loading the model plus its time to the first token (the interpreter's
own start is left out, which favours run). Rounds alternate the two models and the two ways, so load from other
processes hits both alike; the ratio is taken per round, then the median. Target: a swap within 1.2x of a cold run.

    .venv/bin/python scripts/bench_swap.py                  # SmolLM2 Q4_1 and Q8_0, -t 2, 5 rounds
    .venv/bin/python scripts/bench_swap.py A.gguf B.gguf -r 7 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from edgellm.plan.planner import RAM_MARGIN

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the offline SmolLM2 fixtures
EDGELLM = str(Path(sys.executable).parent / "edgellm")
PROMPT = "Name three rivers in Europe."
CTX = 2048


def default_models() -> list[Path]:
    from fixtures import smollm2_gguf, smollm2_package

    return [smollm2_gguf(), smollm2_package() / "smollm2-hf-Q8_0.gguf"]


def cli(env: dict, *args: str) -> str:
    r = subprocess.run([EDGELLM, *args], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise SystemExit(f"edgellm {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def cold_run(env: dict, name: str, threads: int) -> float:
    out = json.loads(cli(env, "run", name, "-p", PROMPT, "-n", "1", "--temp", "0", "--ctx", str(CTX), "-t", str(threads), "--json"))
    return out["engine"]["load_s"] + out["stats"]["ttft_s"]


def planned_ram(env: dict, name: str) -> int:
    return json.loads(cli(env, "plan", name, "--ctx", str(CTX), "--json"))["memory"]["ram"]


class Store:
    """`edgellm serve` over the store, started once; its address from the line it prints when it listens."""

    def __init__(self, env: dict, threads: int, ram: int) -> None:
        self.proc = subprocess.Popen([EDGELLM, "serve", "--port", "0", "-t", str(threads), "--parallel", "1", "--ctx", str(CTX),
                                      "--ram", str(ram)], env=env, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if m := re.match(r"serving .* at (http://\S+)/v1 ", line):
                self.url = m.group(1)
                return
        raise SystemExit("the server ended before serving")

    def first_token(self, name: str) -> float:
        body = {"model": name, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "temperature": 0, "stream": True}
        start = time.perf_counter()
        with httpx2.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=600) as r:
            if r.status_code != 200:
                raise SystemExit(f"{name}: {r.status_code} {r.read().decode()[:300]}")
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    return time.perf_counter() - start
        raise SystemExit(f"{name}: no token came back")

    def loaded(self) -> list[str]:
        return [m["name"].split(":")[0] for m in httpx2.get(self.url + "/api/ps", timeout=60).json()["models"]]

    def swap_to(self, name: str) -> float:
        """The first token's time of a request to `name` while only the other model is loaded."""
        if name in self.loaded():
            raise SystemExit(f"{name} is loaded already: nothing would be swapped")
        seconds = self.first_token(name)
        if self.loaded() != [name]:
            raise SystemExit(f"after the swap the server holds {self.loaded()}, not {name} alone: raise the budget's margin")
        return seconds

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, help="two GGUF files (default: the SmolLM2 Q4_1 and Q8_0 fixtures)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = args.models or default_models()
    if len(models) != 2:
        raise SystemExit("give two models, or none")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "EDGELLM_HOME": home}
        names = ["swap-a", "swap-b"]
        for name, path in zip(names, models):
            cli(env, "import", str(path), "--name", name)
        rams = [planned_ram(env, n) for n in names]
        fixed, share = RAM_MARGIN  # the planner keeps these free of what --ram says is there
        budget = int((max(rams) + min(rams) // 2 + fixed) / (1 - share))  # one model fits, never both
        server = Store(env, args.threads, budget)
        rows: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        try:
            server.first_token(names[1])  # loaded: the requests below go a, b, a, b..., so each one swaps
            for i in range(args.rounds):
                for name in names:
                    if i % 2 == 0:
                        swap, cold = server.swap_to(name), cold_run(env, name, args.threads)
                    else:
                        cold, swap = cold_run(env, name, args.threads), server.swap_to(name)
                    rows[name].append((swap, cold))
        finally:
            server.stop()
    results = [{"model": str(path), "swap_s": round(statistics.median(s for s, _ in rows[n]), 3),
                "cold_run_s": round(statistics.median(c for _, c in rows[n]), 3),
                "ratio": round(statistics.median(s / c for s, c in rows[n]), 3),
                "rounds": [[round(s, 3), round(c, 3)] for s, c in rows[n]]} for n, path in zip(names, models)]
    if args.json:
        print(json.dumps({"threads": args.threads, "rounds": args.rounds, "ram_budget": budget, "results": results}, indent=2))
        return
    print(f"{args.rounds} rounds, {args.threads} threads, context {CTX}, RAM budget {budget / 2**20:.0f} MiB (one model at a time)")
    for r in results:
        print(f"{Path(r['model']).name:40s} swap {r['swap_s']:.3f} s · cold run {r['cold_run_s']:.3f} s · x{r['ratio']:.2f}")


if __name__ == "__main__":
    main()
