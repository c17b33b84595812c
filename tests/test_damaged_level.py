"""A package with one damaged level still offers the others: verify names it, plan and run go on without it
in one line, and nothing is deleted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import smollm2_package

EDGELLM = str(Path(sys.executable).parent / "edgellm")


def edgellm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGELLM, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture
def package(tmp_path) -> Path:
    pkg = tmp_path / "pkg"
    shutil.copytree(smollm2_package(), pkg)
    return pkg


def damage(path: Path) -> None:
    """Flip one byte in the middle of the tensor data: same size, another sha256."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.slow
def test_a_level_whose_bytes_changed_is_skipped_with_one_line(package):
    chosen = json.loads(edgellm("plan", package, "--json", "-t", "1").stdout)["level"]
    bad = next(package.glob(f"*-{chosen}.gguf"))
    damage(bad)
    verify = edgellm("verify", package)
    assert verify.returncode != 0 and bad.name in verify.stdout + verify.stderr
    r = edgellm("run", package, "-p", "Hi", "-n", "4", "--temp", "0", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    used = json.loads(r.stdout)["engine"]["level"]
    assert used != chosen
    notes = [line for line in r.stderr.splitlines() if bad.name in line]
    assert len(notes) == 1 and "sha256" in notes[0] and f"{chosen} skipped" in notes[0], r.stderr
    assert bad.is_file()  # nothing deleted unasked


@pytest.mark.slow
def test_a_level_cut_short_is_left_out_of_plan_and_list(package):
    levels = [f.name for f in sorted(package.glob("*.gguf"))]
    bad = next(package.glob("*-Q2_K.gguf"))
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size - 4096)
    r = edgellm("plan", package, "--json", "-t", "1")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert "Q2_K" not in [lv["level"] for lv in plan["levels"]]
    assert any(bad.name in n and "Q2_K" not in plan["level"] for n in plan["notes"]), plan["notes"]
    assert [f.name for f in sorted(package.glob("*.gguf"))] == levels
