"""The memory model against llama.cpp's own accounting (no-alloc dry runs) and against a real process's peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgellm.gguf_info import read_gguf
from edgellm.memory import MIB, estimate, kv_cells, llama_dry_run
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


def test_offload_moves_layers_from_the_end_and_output_last(shaped):
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
        on_gpu = min(ngl, n)
        assert (m.kv_gpu, m.kv_cpu) == (kv_layer * on_gpu, kv_layer * (n - on_gpu))
    m = estimate(info, 4096, 1)
    assert m.weights_gpu == per_layer[-1]
    full = estimate(info, 4096, n + 1)
    assert full.weights_cpu == by_name["token_embd.weight"]  # embeddings stay on the CPU
    assert full.weights_gpu - estimate(info, 4096, n).weights_gpu == by_name["output.weight"] + by_name["output_norm.weight"]


def test_tied_embeddings_get_a_gpu_copy_of_the_output():
    info = read_gguf(smollm2_gguf())
    assert not any(t.name == "output.weight" for t in info.tensors)
    embd = next(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
    full = estimate(info, 2048, info.n_layers + 1)
    assert full.weights_cpu == embd
    assert full.weights_gpu == info.tensor_bytes  # every layer, the output norm and a copy of the embeddings


PEAK_RSS = """
import json, sys
from edgellm.hardware import detect
from edgellm.models import resolve_model
from edgellm.plan import make_plan
from edgellm.runtime import Engine, Sampling
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
