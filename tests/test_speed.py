"""Predicted and measured tokens/s, and the planner's speed policy (edgellm.plan.speed, plan --min-speed).

Predictions on simulated machines use the reference machine's speeds, so these plans are the same wherever the
tests run; how close predictions come to llama-bench on this machine is scripts/bench_speed_model.py's job."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from edgellm.plan import speed
from edgellm.cli import main
from edgellm.plan.hardware import detect, synthetic
from edgellm.store.models import resolve_model
from edgellm.plan.planner import make_plan
from fixtures import llama3_shaped_package, smollm2_package

GIB = 1 << 30
LEVELS = ("F16", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K")
LAPTOP = synthetic(16 * GIB, cores=4)
GAMING = synthetic(32 * GIB, 12 * GIB, cores=8)


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    return resolve_model(llama3_shaped_package(tmp_path_factory.mktemp("s8") / "llama3-8b", "llama3-8b", LEVELS))


def predicted(ref, hw, level, ngl=0, threads=None):
    machine = speed.machine_speed(hw)
    return speed.predict(ref.file(level).info, machine, threads or hw.cpu_cores, ngl)


def test_smaller_levels_decode_faster_on_the_cpu(llama8b):
    tps = [predicted(llama8b, LAPTOP, lv).decode_tps for lv in LEVELS]
    assert tps == sorted(tps) and tps[-1] > 2.5 * tps[0]  # Q2_K reads a fifth of F16's bytes


def test_more_layers_on_the_gpu_decode_faster(llama8b):
    tps = [predicted(llama8b, GAMING, "Q4_K_M", ngl).decode_tps for ngl in (0, 8, 16, 24, 33)]
    assert tps == sorted(tps) and tps[-1] > 3 * tps[0]
    assert predicted(llama8b, GAMING, "Q4_K_M", 0, threads=8).prompt_tps > 5 * predicted(llama8b, LAPTOP, "Q4_K_M").prompt_tps


def test_default_policy_takes_the_best_level_that_decodes_at_10_tok_s(llama8b):
    plan = make_plan(llama8b, LAPTOP)
    fast_enough = [lv for lv in plan.levels if lv.speed and lv.speed.decode_tps >= speed.INTERACTIVE_TPS]
    assert fast_enough and plan.level == fast_enough[0].level
    slower_fitting = [lv for lv in plan.levels if lv.fit != "no" and lv.speed.decode_tps < speed.INTERACTIVE_TPS]
    assert slower_fitting, "the laptop should hold a level too slow to chat with"
    assert "10 tok/s or more" in plan.why and f"Speed: ~{plan.speed.decode_tps:.1f} tok/s decode" in plan.explain()


def test_min_speed_0_is_quality_first_and_an_unreachable_speed_takes_the_fastest(llama8b):
    best_fitting = next(lv for lv in make_plan(llama8b, LAPTOP).levels if lv.fit != "no")
    assert make_plan(llama8b, LAPTOP, min_speed=0).level == best_fitting.level
    plan = make_plan(llama8b, LAPTOP, min_speed=10_000)
    fastest = max((lv for lv in plan.levels if lv.speed), key=lambda lv: lv.speed.decode_tps)
    assert plan.level == fastest.level and "none decodes at 10000 tok/s" in plan.why


def test_plan_command_shows_speeds_and_takes_min_speed(llama8b, capsys):
    assert main(["plan", str(llama8b.source), "--ram", "16G", "--vram", "0", "--min-speed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["speed"]["source"] == "predicted" and out["speed"]["decode_tps"] >= 1
    assert all(lv["speed"]["decode_tps"] > 0 for lv in out["levels"] if lv["fit"] != "no")
    assert main(["plan", str(llama8b.source), "--ram", "16G", "--vram", "0"]) == 0
    assert "tok/s" in capsys.readouterr().out
    assert main(["plan", str(llama8b.source), "--min-speed", "-1"]) == 2


def test_bench_save_makes_the_plan_use_the_measured_speed(tmp_path, capsys):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for f in smollm2_package().iterdir():
        (os.link if f.suffix == ".gguf" else shutil.copy)(f, pkg / f.name)
    assert main(["bench", str(pkg), "--levels", "Q8_0", "-p", "16", "-n", "8", "-r", "1", "--threads", "1", "--save"]) == 0
    saved = next(f for f in json.loads((pkg / "manifest.json").read_text())["files"] if f["level"] == "Q8_0")["bench"]
    assert saved["machine_id"] == detect().machine_id and saved["n_threads"] == 1 and saved["n_gpu_layers"] == 0
    capsys.readouterr()
    assert main(["plan", str(pkg), "--threads", "1", "--min-speed", "0", "--json"]) == 0
    levels = {lv["level"]: lv for lv in json.loads(capsys.readouterr().out)["levels"]}
    assert levels["Q8_0"]["speed"] == {"decode_tps": saved["tg_tps"], "prompt_tps": saved["pp_tps"], "source": "measured"}
    assert levels["Q2_K"]["speed"]["source"] == "predicted"
    assert main(["plan", str(pkg), "--threads", "2", "--json"]) == 0  # measured with other settings: predicted
    levels = {lv["level"]: lv for lv in json.loads(capsys.readouterr().out)["levels"]}
    assert levels["Q8_0"]["speed"]["source"] == "predicted"


@pytest.mark.parametrize("bench", [None, "x", {"machine_id": "other", "n_threads": 1, "n_gpu_layers": 0, "tg_tps": 5.0},
                                   {"machine_id": "m", "n_threads": 1, "n_gpu_layers": 0, "tg_tps": "fast"},
                                   {"machine_id": "m", "n_threads": 1, "n_gpu_layers": 0, "tg_tps": -1}])
def test_a_bench_record_from_elsewhere_or_damaged_is_not_used(bench):
    assert speed.measured(bench, "m", 1, 0) is None


def test_machine_speed_is_measured_once_and_cached(monkeypatch):
    hw = detect()
    first = speed.machine_speed(hw)
    assert first.memory_bps > 1e8
    monkeypatch.setattr(speed, "measure_machine", lambda *a: pytest.fail("measured again"))
    assert speed.machine_speed(hw).memory_bps == first.memory_bps
