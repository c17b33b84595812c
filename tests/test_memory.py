"""The memory model against llama.cpp's own accounting (no-alloc dry runs) and against a real process's peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgellm.formats.gguf_info import read_gguf
from edgellm.plan.memory import MIB, estimate, kv_cells, llama_dry_run
from fixtures import smollm2_converted_gguf, smollm2_gguf, write_llama3_shaped_gguf


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """Sparse Llama-3-8B and 70B-shaped files (header + holes: no weights on disk)."""
    d = tmp_path_factory.mktemp("shaped")
    return {
        (shape, level): write_llama3_shaped_gguf(d / f"{shape}-{level}.gguf", shape, level)
        for shape, level in [("llama3-8b", "Q4_K_M"), ("llama3-8b", "F16"), ("llama3-70b", "Q4_K_M"), ("llama3-70b", "Q2_K")]
    }


CASES = [
    ("llama3-8b", "Q4_K_M", 8192, "f16"),
    ("llama3-8b", "Q4_K_M", 1000, "q8_0"),  # not a multiple of 256: llama.cpp pads the cache
    ("llama3-8b", "F16", 4096, "q4_0"),
    ("llama3-70b", "Q4_K_M", 8192, "f16"),
    ("llama3-70b", "Q2_K", 2048, "q8_0"),
]


@pytest.mark.parametrize("shape,level,n_ctx,kv", CASES)
def test_totals_agree_with_llama_cpp_dry_run(shaped, shape, level, n_ctx, kv):
    path = shaped[(shape, level)]
    ours = estimate(read_gguf(path), n_ctx, 0, kv)
    theirs = llama_dry_run(path, n_ctx, kv)
    assert ours.weights_cpu == theirs.weights  # llama_model_size: the header's tensor bytes exactly
    assert ours.kv_cpu == theirs.kv
    assert ours.compute_cpu == pytest.approx(sum(theirs.compute.values()), rel=0.05)
    assert ours.llama_total == pytest.approx(theirs.total, rel=0.05)


@pytest.mark.parametrize("n_ctx", [2048, 8192])
def test_smollm2_totals_agree_with_llama_cpp(n_ctx):
    ours = estimate(read_gguf(smollm2_gguf()), n_ctx)
    theirs = llama_dry_run(smollm2_gguf(), n_ctx)
    assert ours.llama_total == pytest.approx(theirs.total, rel=0.05)


def test_kv_cache_is_padded_and_shrinks_with_quantized_types(shaped):
    info = read_gguf(shaped[("llama3-8b", "Q4_K_M")])
    assert kv_cells(1000) == 1024 and kv_cells(8192) == 8192
    f16 = estimate(info, 8192, 0, "f16").kv_cpu
    assert f16 == 1024 * MIB  # 32 layers x 8192 cells x (1024 K + 1024 V) x 2 bytes
    assert estimate(info, 8192, 0, "q8_0").kv_cpu == f16 * 34 // 64
    assert estimate(info, 8192, 0, "q4_0").kv_cpu == f16 * 18 // 64


def test_offload_moves_the_output_first_then_layers_from_the_end(shaped):
    info = read_gguf(shaped[("llama3-8b", "Q4_K_M")])
    n = info.n_layers
    total = info.tensor_bytes
    per_layer = info.layer_bytes()
    by_name = {t.name: t.n_bytes for t in info.tensors}
    kv_layer = estimate(info, 4096, 0).kv_cpu // n
    prev_vram = -1
    for ngl in range(n + 2):
        m = estimate(info, 4096, ngl)
        assert m.weights_cpu + m.weights_gpu == total
        assert m.vram > prev_vram
        prev_vram = m.vram
        on_gpu = max(0, ngl - 1)  # repeating layers: the first GPU layer is the output layer
        assert (m.kv_gpu, m.kv_cpu) == (kv_layer * on_gpu, kv_layer * (n - on_gpu))
    output = by_name["output.weight"] + by_name["output_norm.weight"]
    assert estimate(info, 4096, 1).weights_gpu == output
    assert estimate(info, 4096, 2).weights_gpu == output + per_layer[-1]
    full = estimate(info, 4096, n + 1)
    assert full.weights_cpu == by_name["token_embd.weight"]  # embeddings stay on the CPU
    assert full.weights_gpu - estimate(info, 4096, n).weights_gpu == per_layer[0]


# What llama.cpp itself allocated on an NVIDIA H200 (its CUDA build of the same version, load log of
# scripts/gpu_check.sh) for the Llama-3-8B-shaped Q4_K_M at an 8192-token f16 context:
# n_gpu_layers -> CUDA0 model, KV and compute buffers in MiB.
CUDA_BUFFERS = {13: (2000.99, 384, 258.50), 31: (4385.99, 960, 258.50), 33: (4650.99, 1024, 258.50)}


@pytest.mark.parametrize("ngl", sorted(CUDA_BUFFERS))
def test_gpu_split_matches_what_llamacpp_allocated_on_cuda(shaped, ngl):
    model, kv, compute = CUDA_BUFFERS[ngl]
    m = estimate(read_gguf(shaped[("llama3-8b", "Q4_K_M")]), 8192, ngl)
    assert m.weights_gpu / MIB == pytest.approx(model, rel=0.002)  # llama.cpp pads each tensor a little
    assert m.kv_gpu / MIB == kv
    assert compute <= m.compute_gpu / MIB <= compute + 10  # the plan counts one activation more than CUDA keeps


def test_tied_embeddings_get_a_gpu_copy_of_the_output():
    info = read_gguf(smollm2_gguf())
    assert not any(t.name == "output.weight" for t in info.tensors)
    embd = next(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
    full = estimate(info, 2048, info.n_layers + 1)
    assert full.weights_cpu == embd
    assert full.weights_gpu == info.tensor_bytes  # every layer, the output norm and a copy of the embeddings


PEAK_RSS = """
import json, sys
from edgellm.plan.hardware import detect
from edgellm.store.models import resolve_model
from edgellm.plan.planner import make_plan
from edgellm.engine.runtime import Engine, Sampling
path, n_ctx = sys.argv[1], int(sys.argv[2])
plan = make_plan(resolve_model(path), detect(), ctx=n_ctx)
with Engine.load(plan) as e:
    prompt = [{"role": "user", "content": "Tell me about dragons, castles and knights. " * 20}]
    text = "".join(e.stream_chat(prompt, Sampling(temperature=0, max_tokens=32)))
    assert e.last_stats.gen_tokens > 0
from edgellm.procmem import peak_rss_bytes
print(json.dumps({"predicted": plan.memory.ram, "peak": peak_rss_bytes()}))
"""


@pytest.mark.parametrize("which", ["Q4_1", "F32"])
@pytest.mark.parametrize("n_ctx", [2048, 8192])
def test_predicted_ram_matches_peak_rss(which, n_ctx):
    path = smollm2_gguf() if which == "Q4_1" else smollm2_converted_gguf("f32")
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), str(n_ctx)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["predicted"] == pytest.approx(r["peak"], rel=0.10), r


@pytest.mark.parametrize("name", ["gemma4", "gemma4mm", "gptoss"])
def test_kv_of_layers_of_different_shapes_agrees_with_llama_cpp(name, converted):
    """Gemma 4's sliding-window layers have narrower heads than its global one, and where keys double as
    values (gemma4mm) the global layer has its own KV head count; GPT-OSS slides every other layer: each layer's cache is sized as llama.cpp
    sizes it (it prints MiB to two decimals, hence the tolerance; one width for all layers is 0.23 MiB off)."""
    for n_ctx in (4096, 32768):
        ours = estimate(read_gguf(converted(name, "bf16")), n_ctx)
        theirs = llama_dry_run(converted(name, "bf16"), n_ctx)
        assert ours.kv_cpu == pytest.approx(theirs.kv, abs=0.006 * MIB)



@pytest.mark.parametrize("name", ["lfm2", "granite4h"])
def test_hybrid_state_agrees_with_llama_cpp(name, converted):
    """The converted tiny LFM2 and Granite 4 hybrid: KV cache plus recurrent state as llama.cpp sizes them."""
    path = converted(name, "f32")
    for n_ctx in (4096, 32768):
        ours = estimate(read_gguf(path), n_ctx)
        assert ours.recurrent > 0
        assert ours.kv_cpu == pytest.approx(llama_dry_run(path, n_ctx).kv, abs=0.006 * MIB)


@pytest.mark.parametrize("shape", ["lfm2-350m", "granite-4.0-h-350m"])
def test_hybrid_predicted_ram_matches_peak_rss(shape, tmp_path):
    """LFM2-350M and Granite-4.0-H-350M shapes (Q6_K, which llama.cpp does not repack on load) generating at a
    4096-token context: the planned RAM against the process's peak RSS. The machine's speed is measured here
    first, so the child's peak is the model's and not that measurement's buffers."""
    import arch_fixtures
    from edgellm.plan.hardware import detect
    from edgellm.plan.speed import machine_speed

    machine_speed(detect())
    path = arch_fixtures.write_shaped_gguf(tmp_path / f"{shape}.gguf", shape, "Q6_K")
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), "4096"], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{shape}: predicted {r['predicted'] / MIB:.1f} MiB, peak RSS {r['peak'] / MIB:.1f} MiB")
    assert r["predicted"] == pytest.approx(r["peak"], rel=0.05), r
