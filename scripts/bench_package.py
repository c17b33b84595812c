#!/usr/bin/env python3
"""Benchmark `edgellm package` against llama.cpp's own pipeline on one machine, in one run.

  A: edgellm package SRC -o A --base f16 --levels Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M,Q2_K
  B: convert_hf_to_gguf.py SRC --outtype f16  +  one llama-quantize call per level

Prints both wall times and their ratio A/B (target <= 0.65), then, for every level, whether the file edgellm
wrote is identical to what llama-quantize writes from the same base file (edgellm's F16).
The tools come from scripts/llamacpp_tools.sh (built from the sources llama-cpp-python vendors).

  usage: .venv/bin/python scripts/bench_package.py [SRC | --shape llama3.2-1b] [--repeat N] [--keep DIR]
  SRC defaults to the SmolLM2 test checkpoint (tests/fixtures.py); --shape generates random weights at a real
  model's shape (scripts/make_checkpoint.py), once.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from make_checkpoint import cached_checkpoint  # noqa: E402
LEVELS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]


def tools_root() -> Path:
    out = subprocess.run(["bash", str(ROOT / "scripts/llamacpp_tools.sh")], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHON": sys.executable})
    return Path(out.stdout.strip().splitlines()[-1])


CPU: list[float] = []  # CPU seconds (user + system) of the last timed() call's processes


def timed(cmds: list[list[str]], env: dict | None = None) -> float:
    """Wall seconds for the commands; their CPU seconds go to CPU (a number other load does not move much)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def run_edgellm(src: Path, out: Path) -> float:
    edgellm = Path(sys.executable).with_name("edgellm")
    return timed([[str(edgellm), "package", str(src), "-o", str(out), "--base", "f16", "--name", "m",
                   "--levels", ",".join(LEVELS)]])


def run_llamacpp(tools: Path, src: Path, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base-f16.gguf"
    env = {**os.environ, "PYTHONPATH": str(tools / "gguf-py")}
    cmds = [[sys.executable, str(tools / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16", "--outfile", str(base)]]
    cmds += [[str(tools / "build/bin/llama-quantize"), str(base), str(out / f"{lv}.gguf"), lv] for lv in LEVELS]
    return timed(cmds, env)


def tensors_identical(a: Path, b: Path) -> tuple[bool, str]:
    from gguf import GGUFReader

    ra, rb = GGUFReader(a), GGUFReader(b)
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    if ta.keys() != tb.keys():
        return False, f"tensor names differ ({len(ta)} vs {len(tb)})"
    for name, t in ta.items():
        u = tb[name]
        if t.tensor_type != u.tensor_type or list(t.shape) != list(u.shape):
            return False, f"{name}: {t.tensor_type.name}{list(t.shape)} vs {u.tensor_type.name}{list(u.shape)}"
        if t.data.tobytes() != u.data.tobytes():
            return False, f"{name}: data differs"
    return True, f"{len(ta)} tensors"


def quantize_floor(base: Path) -> tuple[float, float]:
    """(seconds, seconds): the least time the levels can take here (ggml's quantizing routines on every core, each
    (tensor, type) pair once; no reading, writing or hashing), and the same with every level quantized alone
    as llama-quantize does. Per-type speed is timed on 1M random weights."""
    import ctypes

    import numpy as np

    from edgellm.quantize.levels import TABLE
    from edgellm.quantize.onepass import _ggml, read_base, recipe, row_size
    from edgellm.quantize.parallel import usable_cores

    source = read_base(base)
    recipes = [recipe(source, TABLE[lv]) for lv in LEVELS]
    work = [(name, ty) for r in recipes for name, ty in r.tensors if ty != source.tensors[name].ggml_type]
    values = np.random.default_rng(0).standard_normal(1 << 20, dtype=np.float32)
    src = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    ns_per_weight = {}
    for ty in {ty for _, ty in work}:
        dst = np.empty(row_size(ty, 4096) * 256, np.uint8)
        t = time.perf_counter()
        _ggml().ggml_quantize_chunk(ty, src, dst.ctypes.data, 0, 256, 4096, None)
        ns_per_weight[ty] = (time.perf_counter() - t) / values.size

    def cost(pairs) -> float:
        return sum(ns_per_weight[ty] * source.tensors[name].ne[0] * source.tensors[name].n_rows for name, ty in pairs)

    return cost(set(work)) / usable_cores(), cost(work) / usable_cores()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", type=Path)
    ap.add_argument("--shape", help="random weights at this shape instead of SRC, e.g. llama3.2-1b")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of A and B, alternating which goes first")
    ap.add_argument("--keep", type=Path, help="keep the outputs here instead of a temp folder")
    args = ap.parse_args()
    if args.shape:
        args.src = cached_checkpoint(args.shape)
    elif args.src is None:
        import fixtures

        args.src = fixtures.smollm2_checkpoint()
    tools = tools_root()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-package-"))
    print(f"source {args.src}\ntools  {tools}\nmachine {os.cpu_count()} CPUs\n")

    a_times, b_times, a_cpu, b_cpu = [], [], [], []
    for i in range(args.repeat):
        for which in (("A", "B") if i % 2 == 0 else ("B", "A")):
            out = work / f"{which}{i}"
            shutil.rmtree(out, ignore_errors=True)
            if which == "A":
                a_times.append(run_edgellm(args.src, out))
                a_cpu.append(CPU[-1])
            else:
                b_times.append(run_llamacpp(tools, args.src, out))
                b_cpu.append(CPU[-1])
            wall = (a_times if which == "A" else b_times)[-1]
            print(f"round {i + 1} {which}: {wall:.1f} s wall, {CPU[-1]:.1f} s CPU", flush=True)
    a, b = sum(a_times), sum(b_times)
    print(f"\nedgellm package        {a / args.repeat:7.1f} s per run")
    print(f"convert + llama-quantize {b / args.repeat:5.1f} s per run")
    print(f"ratio edgellm / llama.cpp: {a / b:.3f}x wall (target <= 0.65x), {sum(a_cpu) / sum(b_cpu):.3f}x CPU time")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(other work running beside the benchmark skews the ratio)\n")
    once, alone = quantize_floor(work / "A0" / "m-F16.gguf")
    print(f"quantizing floor on {os.cpu_count()} cores: {once:.1f} s with shared tensors quantized once "
          f"({alone:.1f} s quantizing every level alone), of edgellm's {a / args.repeat:.1f} s and llama.cpp's "
          f"{b / args.repeat:.1f} s\n")

    # Same input for both quantizers: edgellm's own F16 base.
    pkg = work / "A0"
    ref = work / "ref"
    ref.mkdir(exist_ok=True)
    base = pkg / "m-F16.gguf"
    for lv in LEVELS:
        subprocess.run([str(tools / "build/bin/llama-quantize"), str(base), str(ref / f"{lv}.gguf"), lv],
                       check=True, capture_output=True)
        if filecmp.cmp(pkg / f"m-{lv}.gguf", ref / f"{lv}.gguf", shallow=False):
            print(f"{lv:7} byte-identical to llama-quantize's file")
        else:
            same, why = tensors_identical(pkg / f"m-{lv}.gguf", ref / f"{lv}.gguf")
            print(f"{lv:7} files differ; tensors identical: {'yes' if same else 'NO'} ({why})")
    same, why = tensors_identical(base, work / "B0" / "base-f16.gguf")
    print(f"\nF16 base vs convert_hf_to_gguf.py's: {'identical tensors' if same else 'differs: ' + why}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
