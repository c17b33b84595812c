"""Sliding windows and experts in the memory model, the planner and the runtime: against llama.cpp's own
accounting (no-alloc dry runs of real-shaped Gemma 2/3, Qwen3-30B-A3B, Mixtral, Qwen3.5, Qwen3-Next, GPT-OSS, LFM2 and
Granite 4 files), by brute force
over the planner's choices, and with the converted tiny Gemma 3 and Qwen3-MoE running in llama.cpp."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import pytest

import arch_fixtures
from edgellm.cli import main
from edgellm.formats.gguf_info import read_gguf
from edgellm.plan.hardware import synthetic
from edgellm.plan.memory import MIB, attention_layout, estimate, experts, llama_dry_run
from edgellm.store.models import resolve_model
from edgellm.plan.placement import expert_patterns
from edgellm.plan.planner import RAM_MARGIN, VRAM_MARGIN, _budget, make_plan
from edgellm.quantize.convert import convert_checkpoint
from edgellm.engine.launch import open_engine
from edgellm.engine.runtime import Sampling

GIB = 1 << 30
GREEDY = Sampling(temperature=0, max_tokens=8, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    d = tmp_path_factory.mktemp("shaped-archs")
    return {name: arch_fixtures.write_shaped_gguf(d / f"{name}.gguf", name) for name in arch_fixtures.SHAPES}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny Gemma 3 (16-token window), Qwen3-MoE and Granite 4 hybrid (experts) fixtures, converted to f32."""
    d = tmp_path_factory.mktemp("tiny-archs")
    return {
        name: convert_checkpoint(arch_fixtures.CHECKPOINTS[name](), d / f"{name}.gguf", "f32", progress=False)
        for name in ("gemma3", "qwen3moe", "granite4h")
    }


# --- the memory model against llama.cpp's accounting --------------------------------------------------------


# Compute buffers the plan undercounts (the totals stay within 0.3%): Qwen3-Next's layer stage outgrows the logits
# at long contexts by more than the plan's masks account for (0.89 of llama.cpp's at 32768 tokens); GPT-OSS 20B's
# graph is laid out 31 MiB larger at 8192 tokens than at 4096 or from 16384 on (414, 435, 410 MiB; the plan: 404).
_UNDERCOUNTED = {("qwen3-next-80b-a3b", 32768): "layer stage at long contexts", ("gpt-oss-20b", 8192): "llama.cpp's layout at 8192"}
TOTALS_CASES = [
    pytest.param(shape, n_ctx, marks=[pytest.mark.xfail(strict=True, reason=f"compute buffer undercounted: {_UNDERCOUNTED[shape, n_ctx]}")]
                 if (shape, n_ctx) in _UNDERCOUNTED else [])
    for shape in arch_fixtures.SHAPES for n_ctx in (8192, 32768)
]


@pytest.mark.parametrize("shape,n_ctx", TOTALS_CASES)
def test_totals_agree_with_llama_cpp_dry_run(shaped, shape, n_ctx):
    path = shaped[shape]
    ours = estimate(read_gguf(path), n_ctx)
    theirs = llama_dry_run(path, n_ctx)  # swa_full off, as the runtime loads
    print(f"\n{shape} @ {n_ctx}: KV {ours.kv_cpu / theirs.kv:.4f}, compute {ours.compute_cpu / sum(theirs.compute.values()):.4f}, "
          f"total {ours.llama_total / theirs.total:.4f}")
    assert ours.weights_cpu == theirs.weights
    assert ours.kv_cpu == pytest.approx(theirs.kv, abs=MIB / 100)  # llama.cpp logs MiB with two decimals
    assert ours.compute_cpu == pytest.approx(sum(theirs.compute.values()), rel=0.05)
    assert ours.llama_total == pytest.approx(theirs.total, rel=0.05)


def test_sliding_layers_keep_window_plus_microbatch_cells(shaped):
    info = read_gguf(shaped["gemma3-4b"])
    att = attention_layout(info)
    assert att.window == 1024 and att.n_sliding == 29  # 5 of every 6 of 34 layers
    m = estimate(info, 32768)
    assert m.swa_cells == 1536  # 1024 + 512, a multiple of 256
    full_cache = llama_dry_run(shaped["gemma3-4b"], 32768, swa_full=True).kv
    assert m.kv_cpu * 34 * 32768 == full_cache * (5 * 32768 + 29 * 1536)  # swa_full would keep 32768 cells in every layer
    assert estimate(info, 1024).swa_cells == 1024  # never more than the context
    assert estimate(read_gguf(shaped["gemma2-2b"]), 8192).swa_cells == 4608  # Gemma 2: every other layer


def test_linear_attention_layers_keep_fixed_state_instead_of_kv(shaped, capsys):
    """Qwen3.5-9B's shape: 24 gated delta net layers keep (conv + delta rule) state of a fixed size, and only
    the 8 full-attention layers a KV cache that grows with the context."""
    path = shaped["qwen3.5-9b"]
    info = read_gguf(path)
    state = 4 * (3 * (4096 + 2 * 16 * 128) + 128 * 4096)  # F32: 3 conv inputs of q, k, v; 32 heads of 128 x 128
    short, long = estimate(info, 8192), estimate(info, 32768)
    assert short.recurrent == long.recurrent == 24 * state == llama_dry_run(path, 8192).recurrent
    assert short.kv_cpu - short.recurrent == 8 * 8192 * 2 * 4 * 256 * 2  # K and V, 4 heads of 256, f16
    assert long.kv_cpu - long.recurrent == 4 * (short.kv_cpu - short.recurrent)
    assert estimate(info, 8192, n_seq=2).recurrent == 2 * short.recurrent  # one state per sequence
    offloaded = estimate(info, 8192, n_gpu_layers=3)  # the output layer, then blk.31 (attention) and blk.30 (linear)
    assert (offloaded.kv_gpu, offloaded.kv_cpu) == (8192 * 4096 + state, short.kv_cpu - 8192 * 4096 - state)
    assert main(["plan", str(path), "--ram", "64G", "--ctx", "8192"]) == 0
    assert "Recurrent state: 50.25 MiB at any context" in capsys.readouterr().out


@pytest.mark.parametrize("shape,state", [
    ("lfm2-1.2b", 4 * 2 * 2048),  # F32: the short convolution's last 2 inputs of 2048 channels
    # the conv's last 3 inputs of x, B and C (3072 + 2 x 128 channels) and 48 heads' 64 x 128 state
    ("granite-4.0-h-tiny", 4 * (3 * (3072 + 2 * 128) + 128 * 3072)),
])
def test_convolution_and_mamba_layers_keep_fixed_state_instead_of_kv(shaped, shape, state, capsys):
    """LFM2's short-convolution layers and Granite 4's Mamba2 layers (marked by zero KV heads) keep a fixed
    state; only the attention layers (6 of 16, 4 of 40) a KV cache that grows with the context."""
    path = shaped[shape]
    info = read_gguf(path)
    n_attention = sum(1 for v in info.metadata[f"{info.arch}.attention.head_count_kv"] if v)
    n_recurrent = info.n_layers - n_attention
    short, long = estimate(info, 8192), estimate(info, 32768)
    assert short.recurrent == long.recurrent == n_recurrent * state
    assert short.recurrent == pytest.approx(llama_dry_run(path, 8192).recurrent, abs=MIB / 100)  # logged to 0.01 MiB
    kv_row = 2 * info.n_head_kv * info.head_dim_k * 2  # K and V, f16
    assert short.kv_cpu - short.recurrent == n_attention * 8192 * kv_row
    assert long.kv_cpu - long.recurrent == 4 * (short.kv_cpu - short.recurrent)
    assert main(["plan", str(path), "--ram", "64G", "--ctx", "8192"]) == 0
    assert "Recurrent state:" in capsys.readouterr().out


def test_granite_hybrid_experts_are_placed_like_other_moe(shaped):
    """Granite 4's experts leave the GPU layer by layer, as other MoE models' do; its shared MLP stays."""
    hw = synthetic(64 * GIB, 2 * GIB)
    plan = make_plan(resolve_model(str(shaped["granite-4.0-h-tiny"])), hw, ctx=8192)
    info = read_gguf(plan.path)
    assert plan.n_gpu_layers == plan.n_layers + 1 and 0 < plan.n_cpu_moe < plan.n_layers
    assert _fits(info, 8192, plan.n_gpu_layers, plan.n_cpu_moe, hw)
    assert not _fits(info, 8192, plan.n_gpu_layers, plan.n_cpu_moe - 1, hw)
    assert plan.memory.experts_cpu == sum(experts(info).layer_bytes[: plan.n_cpu_moe])


# --- the planner ------------------------------------------------------------------------------------------


def _fits(info, n_ctx, ngl, n_cpu_moe, hw) -> bool:
    ram, vram = _budget(hw.ram_available, RAM_MARGIN), _budget(hw.vram_free, VRAM_MARGIN)
    m = estimate(info, n_ctx, ngl, n_cpu_moe=n_cpu_moe)
    return m.ram <= ram and m.vram <= vram


@pytest.mark.parametrize("vram_gib", [6, 8, 12, 16])
def test_moe_keeps_layers_on_the_gpu_and_moves_the_fewest_experts(shaped, vram_gib):
    hw = synthetic(64 * GIB, vram_gib * GIB)
    plan = make_plan(resolve_model(str(shaped["qwen3-30b-a3b"])), hw, ctx=8192)
    n = plan.n_layers
    info = read_gguf(plan.path)
    assert plan.n_gpu_layers == n + 1 and 0 < plan.n_cpu_moe < n
    assert _fits(info, 8192, n + 1, plan.n_cpu_moe, hw)
    assert not _fits(info, 8192, n + 1, plan.n_cpu_moe - 1, hw)  # one layer's experts fewer in RAM would not fit
    assert plan.fit == "partial"
    assert plan.memory.experts_cpu == sum(experts(info).layer_bytes[: plan.n_cpu_moe])


def test_moe_placement_at_the_extremes(shaped):
    ref = resolve_model(str(shaped["qwen3-30b-a3b"]))
    roomy = make_plan(ref, synthetic(64 * GIB, 48 * GIB), ctx=8192)
    assert (roomy.n_gpu_layers, roomy.n_cpu_moe, roomy.fit) == (49, 0, "gpu")
    cpu = make_plan(ref, synthetic(64 * GIB), ctx=8192)
    assert (cpu.n_gpu_layers, cpu.n_cpu_moe) == (0, 0)
    tight = make_plan(ref, synthetic(64 * GIB, 2 * GIB), ctx=8192)  # attention of every layer does not fit
    assert 0 < tight.n_gpu_layers < 49 and tight.n_cpu_moe == 48  # whole layers leave only with all experts in RAM


def test_plan_command_shows_experts_and_windows(shaped, capsys):
    assert main(["plan", str(shaped["qwen3-30b-a3b"]), "--ram", "64G", "--vram", "8G", "--ctx", "8192"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Experts: 128 per layer, 8 used per token; those of layers 0-\d+ stay in RAM", out), out
    assert main(["plan", str(shaped["gemma3-4b"]), "--ram", "64G", "--ctx", "32768", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["memory"]["swa_window"] == 1024 and data["memory"]["swa_cells"] == 1536
    assert data["n_cpu_moe"] == 0 and data["levels"][0]["n_cpu_moe"] == 0
    assert main(["plan", str(shaped["gemma3-4b"]), "--ram", "64G", "--ctx", "32768"]) == 0
    assert "Sliding window: 1024 tokens; those layers keep 1536 KV cells" in capsys.readouterr().out


# --- the runtime ----------------------------------------------------------------------------------------


def _turns(engine, messages):
    text = "".join(engine.stream_chat(messages, GREEDY))
    return text, engine.last_stats


def test_sliding_window_cache_reuse_and_fallback(tiny):
    """The first turn (900+ tokens) outgrows the sliding layers' cache (16 + 512 cells, rounded to 768):
    a next turn that shares all of it reuses the cache; one that differs early must start over, as the
    window before the difference is gone. Both answer as a fresh engine does."""
    long = " ".join(f"word{i}" for i in range(400))
    first = [{"role": "user", "content": long}]
    with open_engine(tiny["gemma3"], ctx=2048) as e:
        assert e.info.n_ctx == 2048
        reply, stats = _turns(e, first)
        assert stats.prompt_tokens > 800
        follow = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
        on, reused = _turns(e, follow)
        assert reused.prompt_eval_tokens < 32  # only the new turn
        edited = [{"role": "user", "content": "word0 changed " + long}]
        again, restarted = _turns(e, edited)
        assert restarted.prompt_eval_tokens == restarted.prompt_tokens
    for messages, expected in ((follow, on), (edited, again)):
        with open_engine(tiny["gemma3"], ctx=2048) as fresh:
            assert _turns(fresh, messages)[0] == expected


def test_expert_patterns_select_the_first_layers_experts(tiny):
    names = [t.name for t in read_gguf(tiny["qwen3moe"]).tensors]
    chosen = {n for n in names if any(re.search(p, n) for p in expert_patterns(1))}
    assert chosen == {f"blk.0.ffn_{w}_exps.weight" for w in ("gate", "up", "down")}


MOE_LOAD = """
import re, sys
from dataclasses import replace
from edgellm.engine import llamacpp
from edgellm.plan.hardware import detect
from edgellm.store.models import resolve_model
from edgellm.plan.planner import make_plan
from edgellm.engine.runtime import Engine, Sampling
plan = make_plan(resolve_model(sys.argv[1]), detect(), ctx=512)
plan = replace(plan, n_cpu_moe=int(sys.argv[2]), n_gpu_layers=plan.n_layers + 1)  # no GPU here: llama.cpp keeps every layer in RAM
with llamacpp.capture_log() as lines:
    with Engine.load(plan) as e:
        print(repr("".join(e.stream_prompt("Hello world", Sampling(temperature=0, max_tokens=8, repeat_penalty=1.0)))))
print(sorted(m.group(1) for m in map(re.compile(r"tensor (\\S+) .*buffer type overridden to CPU").search, lines) if m))
"""


@pytest.mark.parametrize("name", ["qwen3moe", "granite4h"])
def test_engine_applies_the_planned_expert_placement(tiny, name):
    """The planned placement reaches llama.cpp (its log names each tensor it keeps in RAM); the answer is the
    same. Without a GPU every tensor stays in RAM anyway: this checks the plumbing, a GPU machine the effect."""
    runs = [
        subprocess.run([sys.executable, "-c", MOE_LOAD, str(tiny[name]), str(k)], capture_output=True, text=True, check=True)
        for k in (0, 2)
    ]
    (text0, kept0), (text2, kept2) = (r.stdout.strip().splitlines()[-2:] for r in runs)
    assert kept0 == "[]"
    assert kept2 == repr(sorted(f"blk.{i}.ffn_{w}_exps.weight" for i in (0, 1) for w in ("gate", "up", "down")))
    assert text0 == text2


def test_smaller_gpu_at_load_moves_more_experts_to_ram(shaped):
    from edgellm.plan.planner import revalidate

    plan = make_plan(resolve_model(str(shaped["qwen3-30b-a3b"])), synthetic(64 * GIB, 16 * GIB), ctx=8192)
    later = revalidate(plan, synthetic(64 * GIB, 8 * GIB))
    assert later.n_gpu_layers == plan.n_gpu_layers and later.n_cpu_moe > plan.n_cpu_moe
    assert later.memory.vram <= _budget(8 * GIB, VRAM_MARGIN)
    assert f"the experts of {later.n_cpu_moe} layers in RAM instead of {plan.n_cpu_moe}" in later.notes[-1]
