#!/usr/bin/env python3
"""Benchmark `edgellm convert` against llama.cpp's own convert_hf_to_gguf.py on the same checkpoint.

Both run as child processes, alternating, several rounds; the best wall time and the peak RSS of each
(each child's own VmHWM) are compared as ratios, and the two outputs' tensor data compared
byte for byte.

    .venv/bin/python scripts/bench_convert.py                 # SmolLM2-135M-Instruct checkpoint, f16
    .venv/bin/python scripts/bench_convert.py --shape llama3.2-1b   # random bf16 weights at Llama-3.2-1B's shape
    .venv/bin/python scripts/bench_convert.py --src DIR --outtype bf16 --rounds 5

The floor is this machine's raw copy of the checkpoint's weight bytes (read and written in 16 MiB blocks, the
size of an f16 output): no converter can beat it.

Targets: at 135M, edgellm wall <= 0.35x and peak RSS <= 0.5x of llama.cpp's converter; at a generated shape
(1B and up, where start-up no longer hides the work) wall <= 0.5x and peak RSS <= 0.25x; tensor data identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from make_checkpoint import cached_checkpoint  # noqa: E402

TARGETS = {"small": (0.35, 0.5), "shape": (0.5, 0.25)}  # (wall, peak RSS) ratios to llama.cpp's converter
BLOCK = 16 << 20


def llamacpp_root() -> Path:
    """The llama.cpp source root that scripts/llamacpp_tools.sh prepares (builds only if missing)."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "llamacpp_tools.sh")], env=env, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


# Runs a script or module as __main__ and, at exit, writes the process's own peak RSS (VmHWM) to a file.
# rusage of a child would include the peak of the process that forked it (Linux keeps it across exec).
LAUNCHER = r"""
import atexit, os, re, runpy, sys
report, target = sys.argv[1], sys.argv[2]
def peak():
    hwm = re.search(r"VmHWM:\s*(\d+) kB", open("/proc/self/status").read()).group(1)
    open(report, "w").write(hwm)
atexit.register(peak)
sys.argv = sys.argv[2:]
if target.endswith(".py"):
    sys.path.insert(0, os.path.dirname(target))
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def timed(cmd: list[str], env: dict[str, str], report: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one run of `cmd` (a script or module and its arguments)."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", LAUNCHER, str(report), *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if run.returncode:
        sys.exit(f"failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr.decode(errors='replace')[-2000:]}")
    return wall, int(report.read_text()) * 1024


def copy_floor(src: Path, tmp: Path) -> float:
    """Seconds to read the checkpoint's safetensors files and write the same bytes to a new file."""
    out = tmp / "floor.bin"
    start = time.perf_counter()
    with open(out, "wb") as w:
        for f in sorted(src.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as r:
                while block := r.read(BLOCK):
                    w.write(block)
    wall = time.perf_counter() - start
    out.unlink()
    return wall


def tensors_identical(a: Path, b: Path) -> tuple[bool, str]:
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    if set(ta) != set(tb):
        return False, f"tensor names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    for name, x in ta.items():
        y = tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            return False, f"{name}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}"
        if not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            return False, f"{name}: data differs"
    return True, f"{len(ta)} tensors byte-identical"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    src_arg = ap.add_mutually_exclusive_group()
    src_arg.add_argument("--src", type=Path, help="HF checkpoint folder [default: the SmolLM2-135M-Instruct test checkpoint]")
    src_arg.add_argument("--shape", help="generate random weights at this shape (see scripts/make_checkpoint.py), e.g. llama3.2-1b")
    ap.add_argument("--outtype", default="f16", choices=("f32", "f16", "bf16", "q8_0"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import fixtures

    src = cached_checkpoint(args.shape) if args.shape else args.src or fixtures.smollm2_checkpoint()
    wall_target, rss_target = TARGETS["shape" if args.shape else "small"]
    root = llamacpp_root()
    env = {**os.environ, "PYTHONPATH": str(root / "gguf-py")}
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        ours_out, ref_out = Path(tmp) / "edgellm.gguf", Path(tmp) / "llamacpp.gguf"
        commands = {
            "edgellm": ["edgellm.cli", "convert", str(src), "-o", str(ours_out), "--outtype", args.outtype, "-q"],
            "llama.cpp": [str(root / "convert_hf_to_gguf.py"), str(src), "--outtype", args.outtype, "--outfile", str(ref_out)],
        }
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        floors = []
        for r in range(args.rounds):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                results[name].append(timed(commands[name], env, Path(tmp) / "peak"))
            floors.append(copy_floor(src, Path(tmp)))
        same, detail = tensors_identical(ours_out, ref_out)

    print(f"checkpoint: {src}  outtype: {args.outtype}  rounds: {args.rounds}  cpus: {os.cpu_count()}")
    floor = min(floors)
    print(f"{'floor':10s} wall {floor:6.2f} s (runs: {', '.join(f'{w:.2f}' for w in floors)})   raw copy of the weight bytes")
    best = {name: (min(w for w, _ in runs), max(m for _, m in runs)) for name, runs in results.items()}
    for name, (wall, rss) in best.items():
        walls = ", ".join(f"{w:.2f}" for w, _ in results[name])
        print(f"{name:10s} wall {wall:6.2f} s (runs: {walls})   peak RSS {rss / 2**20:7.1f} MiB   {wall / floor:5.2f}x the floor")
    wall_ratio = best["edgellm"][0] / best["llama.cpp"][0]
    rss_ratio = best["edgellm"][1] / best["llama.cpp"][1]
    print(f"wall ratio edgellm/llama.cpp: {wall_ratio:.3f}x (target <= {wall_target}x) {'OK' if wall_ratio <= wall_target else 'MISSED'}")
    print(f"peak RSS ratio edgellm/llama.cpp: {rss_ratio:.3f}x (target <= {rss_target}x) {'OK' if rss_ratio <= rss_target else 'MISSED'}")
    print(f"tensor data identical: {'yes' if same else 'NO'} ({detail})")
    return 0 if same and wall_ratio <= wall_target and rss_ratio <= rss_target else 1


if __name__ == "__main__":
    sys.exit(main())
