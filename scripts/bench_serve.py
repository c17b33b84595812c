#!/usr/bin/env python3
"""`edgellm serve` against llama.cpp's own llama-server: 1, 4 and 8 concurrent streaming clients.

Both servers run the same GGUF with the same threads, slots and per-slot context; each round sends every
concurrency level to one server and then the other (which goes first alternates), so load from other
processes hits both alike. Every request streams `-n` tokens (ignore_eos) from its own prompt. Reported
per level: aggregate tokens/s (all tokens / wall time of the round), TTFT p50/p95, each server's CPU
time per token (steadier than wall time when other processes share the machine), and the median ratio.
A single stream is also compared with `edgellm run` on the same prompt (generation tokens/s).
Targets: one stream >= 0.95x `edgellm run`; four streams' aggregate >= 1.0x llama-server.

    .venv/bin/python scripts/bench_serve.py                    # SmolLM2 Q4_1, -t 2, 4 slots, 3 rounds
    .venv/bin/python scripts/bench_serve.py model.gguf -t 4 --slots 8 -r 5 --json

llama-server is built with `LLAMACPP_SERVER=1 scripts/llamacpp_tools.sh` (this script does it when missing);
without it, only edgellm's numbers are printed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the offline SmolLM2 fixture
EDGELLM = str(Path(sys.executable).parent / "edgellm")
TOPICS = ["a lighthouse", "a city at night", "the first snow", "a lost dog", "an old clock", "a desert road", "a river", "a violin"]
# the same sampling on both sides, stated in full so neither server's defaults decide
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}


def prompt(i: int) -> str:
    return f"Story {i}. Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_bin() -> Path | None:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "llamacpp_tools.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable, "LLAMACPP_SERVER": "1"})
    if out.returncode != 0:
        print(f"llama-server could not be built; comparing with edgellm run only:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return Path(out.stdout.strip().splitlines()[-1]) / "build" / "bin" / "llama-server"


class Running:
    """A server process, ready once /health answers 200."""

    def __init__(self, name: str, cmd: list[str], port: int):
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}: {' '.join(cmd)}")
            try:
                if httpx2.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not become ready")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


@dataclass
class Stream:
    ttft: float  # request sent -> first text
    tokens: int
    decode_tps: float  # tokens after the first / time after the first


def stream(url: str, text: str, n: int) -> Stream:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": n, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, **SAMPLING}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx2.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():  # substring tests, not a JSON parse per token: the client shares the CPUs
            if '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            elif '"content":"' in line and '"content":""' not in line:
                last = time.perf_counter()
                first = first or last
    return Stream(first - t0, tokens, (tokens - 1) / max(last - first, 1e-9))


def round_at(server: Running, clients: int, n: int, offset: int) -> dict:
    """One concurrency level against one server: wall-clock numbers, and the server's CPU time per token
    (all its threads), which other processes' load disturbs far less than wall time."""
    proc = psutil.Process(server.proc.pid)
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda i: stream(server.url, prompt(offset + i), n), range(clients)))
    wall, cpu = time.perf_counter() - t0, sum(proc.cpu_times()[:2]) - cpu0
    tokens = sum(s.tokens for s in done)
    return {"tps": tokens / wall, "cpu_ms_per_token": 1000 * cpu / tokens, "ttft": [s.ttft for s in done], "decode_tps": done[0].decode_tps}


def edgellm_run_tps(model: Path, threads: int, n: int, i: int) -> float:
    out = subprocess.run([EDGELLM, "run", str(model), "-p", prompt(i), "-n", str(n), "-t", str(threads), "--json",
                          "--temp", str(SAMPLING["temperature"]), "--repeat-penalty", "1.0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["stats"]["gen_tps"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("-n", "--tokens", type=int, default=128, help="tokens per request")
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from fixtures import smollm2_gguf

        args.model = smollm2_gguf()
    levels = [int(c) for c in args.clients.split(",")]
    t, slots, ctx = str(args.threads), str(args.slots), args.ctx

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped bench stops its servers too
    servers: list[Running] = []
    binary = llama_server_bin()
    results: dict[str, dict[int, list[dict]]] = {}
    run_tps: list[float] = []
    offset = 0
    try:
        port = free_port()
        servers.append(Running("edgellm", [EDGELLM, "serve", str(args.model), "--port", str(port), "-t", t, "--parallel", slots,
                                           "--ctx", str(ctx), "--queue", "1000"], port))
        if binary is not None:
            port = free_port()
            servers.append(Running("llama-server", [str(binary), "-m", str(args.model), "--port", str(port), "-t", t, "-tb", t,
                                                    "-np", slots, "-c", str(args.slots * ctx), "-ngl", "0"], port))
        results = {s.name: {c: [] for c in levels} for s in servers}
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            run_tps.append(edgellm_run_tps(args.model, args.threads, args.tokens, offset))
            for c in levels:
                for s in order:
                    results[s.name][c].append(round_at(s, c, args.tokens, offset))
                    offset += c
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()

    summary = {"model": str(args.model), "threads": args.threads, "slots": args.slots, "ctx_per_slot": ctx, "tokens": args.tokens,
               "rounds": args.rounds, "edgellm_run_tps": statistics.median(run_tps), "levels": {}}
    for c in levels:
        row = {}
        for name, per in results.items():
            ttfts = [x for rnd in per[c] for x in rnd["ttft"]]
            row[name] = {"tps": statistics.median(rnd["tps"] for rnd in per[c]), "ttft_p50": pct(ttfts, 0.5), "ttft_p95": pct(ttfts, 0.95),
                         "cpu_ms_per_token": statistics.median(rnd["cpu_ms_per_token"] for rnd in per[c])}
        if "llama-server" in results:
            pairs = list(zip(results["edgellm"][c], results["llama-server"][c]))
            row["ratio"] = statistics.median(a["tps"] / b["tps"] for a, b in pairs)
            row["cpu_ratio"] = statistics.median(b["cpu_ms_per_token"] / a["cpu_ms_per_token"] for a, b in pairs)  # > 1: edgellm is cheaper
        summary["levels"][c] = row
    if levels[0] == 1:  # paired by round: the load of that moment hits both
        summary["single_vs_run"] = statistics.median(rnd["decode_tps"] / tps for rnd, tps in zip(results["edgellm"][1], run_tps))

    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.model.name} · -t {args.threads} · {args.slots} slots × {ctx} · {args.tokens} tokens per request · {args.rounds} rounds")
    print(f"{'clients':>7}  {'edgellm tok/s':>13}  {'TTFT p50/p95 s':>15}  {'CPU ms/tok':>10}  "
          f"{'llama-server tok/s':>18}  {'TTFT p50/p95 s':>15}  {'CPU ms/tok':>10}  {'ratio':>6}")
    for c, row in summary["levels"].items():
        e, ls = row["edgellm"], row.get("llama-server")
        other = (f"  {ls['tps']:18.1f}  {ls['ttft_p50']:7.3f}/{ls['ttft_p95']:<7.3f}  {ls['cpu_ms_per_token']:10.2f}  {row['ratio']:6.2f}"
                 if ls else "")
        print(f"{c:>7}  {e['tps']:13.1f}  {e['ttft_p50']:7.3f}/{e['ttft_p95']:<7.3f}  {e['cpu_ms_per_token']:10.2f}{other}")
    for c, row in summary["levels"].items():
        if "cpu_ratio" in row:
            print(f"{c} clients: edgellm gives {row['ratio']:.2f}x llama-server's tokens/s at {1 / row['cpu_ratio']:.2f}x its CPU time per token")
    if "single_vs_run" in summary:
        print(f"one stream decodes at {summary['single_vs_run']:.2f}x of `edgellm run` ({summary['edgellm_run_tps']:.1f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
