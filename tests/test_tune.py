"""`edgellm tune` on the demo model, for real: the sweeps measured through llama.cpp, the winner saved and then
used by `run` (and overridden by its options)."""

from __future__ import annotations

import json
import os
import shutil

import psutil
import pytest

from conftest import run_cli
from edgellm.plan import tune
from edgellm.store.models import resolve_model
from edgellm.plan.hardware import detect
from edgellm.paths import data_dir

QUICK = ("-p", "32", "-n", "8", "-r", "1")


def demo_file():
    return resolve_model(None).file().path


@pytest.mark.slow  # measures every thread count and batch size on the demo model
def test_tune_measures_every_setting_and_keeps_the_fastest(capsys):
    code, out, _ = run_cli(capsys, "tune", *QUICK, "--json")
    assert code == 0
    result = json.loads(out)
    trials = result["trials"]
    logical = psutil.cpu_count(logical=True)
    assert {t["threads"] for t in trials} == set(range(1, logical + 1))
    assert {t["n_ubatch"] for t in trials} == set(tune.UBATCHES) and {t["kv_type"] for t in trials} == {"f16"}
    assert all(t["pp_tps"] > 0 and t["tg_tps"] > 0 for t in trials)
    best = result["best"]
    swept = [t for t in trials if t["n_ubatch"] == 512] + [t for t in trials if t["threads"] == best["threads"]]
    assert best["turn_s"] == min(t["turn_s"] for t in swept)
    assert result["gain"] == result["baseline"]["turn_s"] / best["turn_s"] and result["baseline"]["threads"] == detect().cpu_cores

    saved = tune.lookup(demo_file(), detect().machine_id)
    assert saved == tune.Settings(best["threads"], best["n_ubatch"], "f16")

    code, out, _ = run_cli(capsys, "run", "-p", "Hi", "-n", "4", "--json")
    plan = json.loads(out)["plan"]
    assert code == 0 and plan["n_ubatch"] == best["n_ubatch"] and plan["n_threads"] <= best["threads"]
    assert any(n.startswith("tuned here by `edgellm tune`") for n in plan["notes"])
    code, out, _ = run_cli(capsys, "run", "-p", "Hi", "-n", "4", "--json", "--threads", str(logical))
    assert code == 0 and json.loads(out)["plan"]["n_threads"] == logical  # the user's choice stays


@pytest.mark.slow  # measures each setting with both cache types
def test_kv_quant_is_tried_only_when_asked(capsys):
    code, out, _ = run_cli(capsys, "tune", *QUICK, "--json", "--kv-quant")
    assert code == 0 and "q8_0" in {t["kv_type"] for t in json.loads(out)["trials"]}


@pytest.mark.slow  # tunes a model twice
def test_settings_of_a_changed_file_or_a_damaged_store_are_not_used(tmp_path, capsys):
    model = tmp_path / "model.gguf"
    shutil.copy(demo_file(), model)  # a copy: changing the link's time would change the installed file's
    assert run_cli(capsys, "tune", str(model), *QUICK, "--json")[0] == 0
    machine = detect().machine_id
    assert tune.lookup(model, machine) is not None
    os.utime(model, ns=(1, 1))  # another file now, as far as anyone can tell
    assert tune.lookup(model, machine) is None
    (data_dir() / tune.FILENAME).write_text("{not json")
    assert tune.lookup(model, machine) is None
    code, out, _ = run_cli(capsys, "run", str(model), "-p", "Hi", "-n", "4", "--json")
    assert code == 0 and not any("tuned" in n for n in json.loads(out)["plan"]["notes"])
