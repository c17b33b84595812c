"""The table gpu_check.sh writes to levels.md: edgellm bench per level, every layer on the CPU against the GPU.

    usage: python scripts/gpu_levels_report.py OUT_DIR   (reads OUT_DIR/bench-*-ngl*.json)
"""

import glob
import json
import os
import sys


def cell(r, key):
    return f"{r[key]['mean']:.1f}" if r and r.get(key) else "-"


def main(out: str) -> None:
    rows: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(out, "bench-*-ngl*.json"))):
        r = json.load(open(path))["results"][0]
        rows.setdefault(r["file"], {})["GPU" if r.get("n_gpu_layers") else "CPU"] = r
    print("| file | CPU pp t/s | CPU tg t/s | GPU pp t/s | GPU tg t/s | GPU layers | GPU tg / CPU tg |")
    print("|---|---|---|---|---|---|---|")
    for name, by in rows.items():
        c, g = by.get("CPU"), by.get("GPU")
        ratio = f"{g['tg']['mean'] / c['tg']['mean']:.2f}x" if c and g and c.get("tg") and g.get("tg") else "-"
        layers = f"{g['n_gpu_layers']}/{g['n_layers'] + 1} {'+'.join(g.get('devices') or [])}" if g else "-"
        print(f"| {name} | {cell(c, 'pp')} | {cell(c, 'tg')} | {cell(g, 'pp')} | {cell(g, 'tg')} | {layers} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])
