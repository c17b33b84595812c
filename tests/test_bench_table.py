"""bench's terminal table: whole values at 80 columns (the most telling columns first), more columns when wider."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgellm.bench.run import BenchConfig, BenchReport, FileResult, Measure

LEVELS = [("Q8_0", 145_000_000, 8.5), ("Q4_K_M", 105_000_000, 5.1), ("Q2_K", 88_000_000, 3.9)]


def report(quality: bool) -> BenchReport:
    rows = []
    for i, (level, size, bpw) in enumerate(LEVELS):
        r = FileResult(file=f"m-{level}.gguf", level=level, size_bytes=size, bits_per_weight=bpw,
                       pp=Measure.of([1384.21 + i, 1390.5]), tg=Measure.of([138.42 + i, 139.1]), ttft_s=0.0412, load_s=0.31,
                       peak_rss_bytes=412_000_000, n_threads=2, n_ctx=4096, n_layers=30, n_gpu_layers=31, devices=["Vulkan0"])
        if quality:
            r.ppl, r.ppl_stderr, r.kld, r.same_top = 18.2345 + i, 0.4123, 0.01234 * i, 0.971
        rows.append(r)
    machine = {"summary": "test machine", "id": "t", "platform": "linux", "python": "3"}
    return BenchReport("SmolLM2", BenchConfig(), "method", machine, rows)


def render(rep: BenchReport, width: int) -> str:
    code = ("import pickle, sys\nfrom edgellm.commands.bench import _print_table\n"
            "_print_table(pickle.loads(sys.stdin.buffer.read()))\n")
    import os
    import pickle

    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(rep), capture_output=True,
                          env={**os.environ, "COLUMNS": str(width)}, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.mark.parametrize("quality", [False, True])
def test_80_columns_show_whole_values(quality):
    text = render(report(quality), 80)
    table = text.split("method")[0]
    assert "…" not in table, text
    assert max(len(line) for line in table.splitlines()) <= 80
    for value in ("Q4_K_M", "139.26 ± 0.23", "1387.86 ± 3.74", "100.14 MiB"):
        assert value in table, text
    if quality:
        assert "18.235 ± 0.412" in table and "PPL" in table
    else:
        assert "PPL" not in table and "KLD" not in table  # columns with nothing in them are left out


def test_wider_terminals_show_more_columns():
    narrow, wide = render(report(True), 80), render(report(True), 200)
    assert "GPU layers" not in narrow.split("method")[0] or "peak RAM" not in narrow
    for header in ("TTFT ms", "peak RAM", "GPU layers", "same top", "load s"):
        assert header in wide, wide
    assert "31/31 Vulkan0" in wide and "…" not in wide.split("method")[0]
