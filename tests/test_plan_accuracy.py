"""`plan --max-loss`: the smallest level whose accuracy recorded by `eval --save` is within POINTS of the best."""

from __future__ import annotations

import json
import os
import shutil

import fixtures
import pytest
from conftest import run_cli

from edgellm.store.manifest import Manifest


def _record(accuracy: float, sha: str = "a" * 64) -> dict:
    return {"file": "hs.txt", "sha256": sha, "tasks": 100, "correct": round(accuracy * 100), "accuracy": accuracy,
            "stderr": 0.049, "skipped": 0, "paired": None, "created": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def pkg(tmp_path):
    return fixtures.linked_smollm2_package(tmp_path)


def _record_all(pkg, by_level: dict[str, dict]) -> None:
    m = Manifest.load(pkg)
    for e in m.files:
        e.accuracy = by_level.get(e.level)
    m.save(pkg)


def _plan(capsys, pkg, *args):
    code, out, err = run_cli(capsys, "plan", str(pkg), "--ram", "8G", "--vram", "0", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_smallest_level_within_the_loss(pkg, capsys):
    _record_all(pkg, {"F16": {"hellaswag": _record(0.60)}, "Q8_0": {"hellaswag": _record(0.58)},
                      "Q2_K": {"hellaswag": _record(0.40)}})
    assert _plan(capsys, pkg)["level"] == "F16"  # without --max-loss: the policy as before
    p = _plan(capsys, pkg, "--max-loss", "5")
    assert p["level"] == "Q8_0" and "within 5 points of the best level" in p["why"]
    assert _plan(capsys, pkg, "--max-loss", "2")["level"] == "Q8_0"  # exactly 2 points: within
    assert _plan(capsys, pkg, "--max-loss", "1.9")["level"] == "F16"
    assert _plan(capsys, pkg, "--max-loss", "25")["level"] == "Q2_K"
    p = _plan(capsys, pkg, "--max-loss", "5", "--min-speed", "1000")
    assert p["level"] == "Q8_0" and any(n.startswith("--min-speed is not used with --max-loss") for n in p["notes"])


def test_every_task_counts_and_levels_without_records_are_left_out(pkg, capsys):
    _record_all(pkg, {"F16": {"hellaswag": _record(0.60), "exam": _record(0.50, "b" * 64)},
                      "Q8_0": {"hellaswag": _record(0.58), "exam": _record(0.30, "b" * 64)},
                      "Q2_K": {"hellaswag": _record(0.59)}})
    p = _plan(capsys, pkg, "--max-loss", "5")
    assert p["level"] == "F16"  # Q8_0 loses 20 points of exam; Q2_K has no exam record
    assert "Q2_K has no recorded exam accuracy: not eligible with --max-loss" in p["notes"]
    assert _plan(capsys, pkg, "--max-loss", "5", "--max-loss-task", "hellaswag")["level"] == "Q2_K"


def test_no_records_is_one_line(pkg, capsys):
    code, out, err = run_cli(capsys, "plan", str(pkg), "--max-loss", "5")
    assert code == 2 and out == ""
    assert err.startswith("edgellm: --max-loss needs task accuracy recorded in the package manifest") and err.count("\n") == 1
    _record_all(pkg, {"F16": {"hellaswag": _record(0.6)}})
    code, _, err = run_cli(capsys, "plan", str(pkg), "--max-loss", "5", "--max-loss-task", "gsm8k")
    assert code == 2 and err == "edgellm: --max-loss-task gsm8k: no level has a recorded gsm8k accuracy (recorded: hellaswag)\n"


def test_list_and_inspect_show_recorded_accuracy(pkg, capsys, monkeypatch):
    from edgellm import paths

    monkeypatch.setenv("COLUMNS", "200")  # the tables on one line each

    _record_all(pkg, {"F16": {"hellaswag": _record(0.60)}, "Q8_0": {"hellaswag": _record(0.58)}})
    code, out, err = run_cli(capsys, "inspect", str(pkg), "--json")
    assert code == 0, err
    levels = {lv["level"]: lv["accuracy"] for lv in json.loads(out)["levels"]}
    assert levels["Q8_0"] == {"hellaswag": {"accuracy": 0.58, "stderr": 0.049, "tasks": 100, "file": "hs.txt"}}
    assert levels["Q2_K"] is None
    code, out, _ = run_cli(capsys, "inspect", str(pkg))
    assert code == 0 and "hellaswag acc %" in out and "58.00 ± 4.90 (100)" in out

    paths.store_dir().mkdir(parents=True)
    shutil.copytree(pkg, paths.store_dir() / "smol", copy_function=os.link)
    code, out, err = run_cli(capsys, "list", "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["packages"]
    got = {lv["level"]: lv["accuracy"] for lv in entry["levels"]}
    assert got["F16"]["hellaswag"]["accuracy"] == 0.60 and got["Q2_K"] is None
    code, out, _ = run_cli(capsys, "list")
    assert "ACCURACY" in out and "Q8_0: hellaswag 58.00 ± 4.90" in out
