"""The planner on made-up machines and Llama-3-8B/70B-shaped packages (sparse files: real headers, no weights).

Each choice is checked against the memory model by brute force: the chosen level is the best one that
fits at any GPU split, the chosen GPU layers fit and one more would not, and the context only shrank
because the full one did not fit. These plans put quality first (min_speed=0); the speed policy is tested
in test_speed.py."""

from __future__ import annotations

import json

import pytest

from edgellm.cli import main
from edgellm.errors import NotEnoughSpace
from edgellm.plan.hardware import synthetic
from edgellm.plan.memory import estimate
from edgellm.store.models import resolve_model
from edgellm.plan.planner import MIN_CTX, RAM_MARGIN, VRAM_MARGIN, _budget, revalidate
from edgellm.plan.planner import make_plan as _make_plan
from fixtures import llama3_shaped_package

GIB = 1 << 30


def make_plan(*args, **kwargs):
    """The planner with quality first: the highest level that fits, whatever its speed."""
    return _make_plan(*args, **{"min_speed": 0, **kwargs})
LEVELS = ("F16", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K")
LAPTOP = synthetic(8 * GIB)
MID = synthetic(16 * GIB, 6 * GIB)
BIG = synthetic(32 * GIB, 24 * GIB)


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    return resolve_model(llama3_shaped_package(tmp_path_factory.mktemp("p8") / "llama3-8b", "llama3-8b", LEVELS))


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory):
    return resolve_model(llama3_shaped_package(tmp_path_factory.mktemp("p70") / "llama3-70b", "llama3-70b", ("Q4_K_M", "Q2_K")))


def budgets(hw):
    vram = _budget(hw.vram_free, VRAM_MARGIN) if hw.offload_gpus else 0
    return _budget(hw.ram_available, RAM_MARGIN), vram


def fits(f, n_ctx, ngl, hw) -> bool:
    ram, vram = budgets(hw)
    m = estimate(f.info, n_ctx, ngl)
    return m.ram <= ram and m.vram <= vram


def fits_somehow(f, n_ctx, hw) -> bool:
    max_ngl = f.info.n_layers + 1 if hw.offload_gpus else 0
    return any(fits(f, n_ctx, ngl, hw) for ngl in range(max_ngl + 1))


def check_choice(plan, ref, hw):
    chosen = next(f for f in ref.files if f.path == plan.path)
    better = ref.files[: ref.files.index(chosen)]
    assert all(not fits_somehow(f, MIN_CTX, hw) for f in better), "a better level fits"
    assert fits(chosen, plan.n_ctx, plan.n_gpu_layers, hw)
    if hw.offload_gpus and plan.n_gpu_layers <= chosen.info.n_layers:
        assert not fits(chosen, plan.n_ctx, plan.n_gpu_layers + 1, hw), "one more GPU layer would fit"
    if plan.n_ctx < 8192:
        assert not fits_somehow(chosen, plan.n_ctx * 2, hw), "a larger context would fit"


def test_levels_are_ordered_best_first(llama8b):
    assert [f.level for f in llama8b.files] == list(LEVELS)


def test_8gb_laptop_runs_8b_q6_on_the_cpu_at_a_shorter_context(llama8b):
    plan = make_plan(llama8b, LAPTOP)
    check_choice(plan, llama8b, LAPTOP)
    assert (plan.level, plan.n_gpu_layers, plan.n_ctx) == ("Q6_K", 0, 4096)
    fit = {lv.level: (lv.fit, lv.n_ctx) for lv in plan.levels}
    assert fit == {"F16": ("no", 2048), "Q8_0": ("no", 2048), "Q6_K": ("cpu", 4096), "Q4_K_M": ("cpu", 8192), "Q2_K": ("cpu", 8192)}


def test_16gb_with_6gb_gpu_splits_the_best_level(llama8b):
    plan = make_plan(llama8b, MID)
    check_choice(plan, llama8b, MID)
    assert plan.level == "F16" and 0 < plan.n_gpu_layers < 33
    assert plan.memory.vram <= budgets(MID)[1]
    q4 = next(lv for lv in plan.levels if lv.level == "Q4_K_M")
    assert q4.fit == "partial" and q4.n_gpu_layers > plan.n_gpu_layers


def test_32gb_with_24gb_gpu_runs_8b_f16_fully_on_the_gpu(llama8b):
    plan = make_plan(llama8b, BIG)
    check_choice(plan, llama8b, BIG)
    assert (plan.level, plan.n_gpu_layers, plan.fit) == ("F16", 33, "gpu")
    assert {lv.fit for lv in plan.levels} == {"gpu"}


def test_70b_splits_across_32gb_and_24gb(llama70b):
    plan = make_plan(llama70b, BIG)
    check_choice(plan, llama70b, BIG)
    assert plan.level == "Q4_K_M" and 0 < plan.n_gpu_layers < 80
    assert "partial" in plan.explain().lower() or "partially" in plan.explain()


@pytest.mark.parametrize("hw", [LAPTOP, MID], ids=["laptop", "16+6"])
def test_70b_does_not_fit_and_says_so_with_numbers(llama70b, hw):
    with pytest.raises(NotEnoughSpace, match=r"smallest level Q2_K needs about [\d.]+ GiB .* there is [\d.]+ GiB"):
        make_plan(llama70b, hw)


def test_context_shrinks_before_the_level_drops(llama8b):
    q4 = llama8b.file("Q4_K_M")
    ram_needed = lambda n_ctx: estimate(q4.info, n_ctx).ram  # noqa: E731
    # a machine where Q4_K_M fits at 4096 tokens but not at 8192
    hw = synthetic(int((ram_needed(4096) + ram_needed(8192)) / 2 / (1 - RAM_MARGIN[1]) + RAM_MARGIN[0]))
    plan = make_plan(llama8b, hw)
    check_choice(plan, llama8b, hw)
    assert (plan.level, plan.n_ctx) == ("Q4_K_M", 4096)
    assert any("shrunk from 8192 to 4096" in n for n in plan.notes)
    # with a minimum context of 8192 it drops to the next level instead
    strict = make_plan(llama8b, hw, min_ctx=8192)
    assert (strict.level, strict.n_ctx) == ("Q2_K", 8192)


def test_explicit_context_and_kv_type_are_kept(llama8b):
    plan = make_plan(llama8b, BIG, ctx=32768, kv_type="q8_0")
    assert (plan.n_ctx, plan.kv_type) == (32768, "q8_0")
    assert any("trained on" in n for n in plan.notes)
    assert plan.memory.kv_gpu == estimate(plan_file(llama8b, plan).info, 32768, 33, "q8_0").kv_gpu


def plan_file(ref, plan):
    return next(f for f in ref.files if f.path == plan.path)


def test_overrides_simulate_another_machine(llama8b):
    assert make_plan(llama8b, BIG, ram=8 * GIB, vram=0).level == "Q6_K"
    assert make_plan(llama8b, LAPTOP, ram=32 * GIB, vram=24 * GIB).n_gpu_layers == 33


def test_vanished_gpu_falls_back_to_the_cpu(llama8b):
    plan = make_plan(llama8b, MID, ram=32 * GIB)  # plenty of RAM: the CPU can take every layer
    assert plan.n_gpu_layers > 0
    gone = revalidate(plan, synthetic(32 * GIB))
    assert gone.n_gpu_layers == 0 and gone.path == plan.path
    assert any("the GPU is gone" in n for n in gone.notes)
    smaller = revalidate(plan, synthetic(32 * GIB, 4 * GIB))
    assert 0 < smaller.n_gpu_layers < plan.n_gpu_layers
    assert any("less than the" in n for n in smaller.notes)
    assert revalidate(plan, MID.with_overrides(ram=32 * GIB)) is plan


def test_vanished_gpu_without_enough_ram_refuses_with_numbers(llama8b):
    plan = make_plan(llama8b, BIG)
    with pytest.raises(NotEnoughSpace, match=r"no longer fits: the GPU is gone, and [\d.]+ GiB of RAM would be needed"):
        revalidate(plan, synthetic(8 * GIB))


def test_explain_names_the_choice(llama8b):
    text = make_plan(llama8b, MID).explain()
    for part in ("Choice: F16", "GPU layers:", "Context: 8192 tokens", "RAM:", "VRAM:", "simulated"):
        assert part in text


# --- the command ---------------------------------------------------------------------------------


def test_plan_command_json(llama8b, capsys):
    assert main(["plan", str(llama8b.source), "--ram", "16G", "--vram", "6G", "--json", "--min-speed", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["level"] == "F16" and out["fit"] == "partial"
    assert [lv["level"] for lv in out["levels"]] == list(LEVELS)
    assert out["memory"]["vram"] <= out["vram_budget"]


def test_plan_command_table(llama8b, capsys):
    assert main(["plan", str(llama8b.source), "--ram", "8G", "--vram", "0", "--min-speed", "0"]) == 0
    out = capsys.readouterr().out
    assert "Choice: Q6_K" in out and "full (RAM)" in out and "no" in out


def test_plan_command_does_not_fit(llama70b, capsys):
    assert main(["plan", str(llama70b.source), "--ram", "8G", "--vram", "0", "--min-speed", "0"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("edgellm: ") and "does not fit" in err and "GiB" in err and len(err.strip().splitlines()) == 1


def test_plan_command_bad_inputs(tmp_path, capsys):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    assert main(["plan", str(not_gguf), "--min-speed", "0"]) == 1
    assert "not a GGUF file" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.gguf"), "--min-speed", "0"]) == 2
    assert "no such model" in capsys.readouterr().err
    assert main(["plan", "--ram", "lots", "--min-speed", "0"]) == 2
    assert "not a size" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plan", str(tmp_path / "empty"), "--min-speed", "0"]) == 2
    assert "holds no .gguf files" in capsys.readouterr().err


def test_unified_memory_counts_the_gpu_share_against_ram(llama8b):
    from dataclasses import replace

    from edgellm.plan.hardware import GPU

    separate = synthetic(16 * GIB, 12 * GIB)
    apple = replace(separate, gpus=(GPU(0, "Apple M2", "apple", 12 * GIB, 12 * GIB, "llama.cpp", unified=True),))
    assert make_plan(llama8b, separate).level == "F16"  # 16 GiB RAM + 12 GiB VRAM hold it
    plan = make_plan(llama8b, apple)  # but 16 GiB shared do not
    ram, _ = budgets(apple)
    assert plan.level == "Q8_0" and plan.memory.ram + plan.memory.vram <= ram
