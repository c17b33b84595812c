"""Perplexity and KL divergence through llama.cpp's logits, checked against llama-perplexity itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import fixtures
import pytest

from edgellm.errors import UsageError
from edgellm.engine.quality import BaseLogProbs, Evaluator, kl_divergence, perplexity
from edgellm.quantize.levels import TABLE, quantize

N_CTX = 128


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = fixtures.smollm2_f16_gguf()
    folder = tmp_path_factory.mktemp("quality")
    return {"base": base, **{n: quantize(base, folder / f"{n}.gguf", TABLE[n]) for n in ("Q8_0", "Q2_K")}}


@pytest.fixture(scope="module")
def text():
    return fixtures.english_text("eval", 2500)


def _tools_root() -> Path:
    root = fixtures.llamacpp_tools()
    if root is None:
        pytest.skip("llama.cpp's tools cannot be built here: cmake and ninja are needed")
    return root


def test_perplexity_matches_llama_perplexity(models, text, tmp_path):
    ours = perplexity(models["base"], text, n_ctx=N_CTX)
    f = tmp_path / "text.txt"
    f.write_text(text)
    tool = _tools_root() / "build/bin/llama-perplexity"
    run = subprocess.run([str(tool), "-m", str(models["base"]), "-f", str(f), "-c", str(N_CTX), "-b", str(N_CTX),
                          "-t", "1"], capture_output=True, text=True, timeout=300)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
    assert m, run.stderr[-2000:]
    chunks = re.search(r"calculating perplexity over (\d+) chunks", run.stderr)
    assert chunks and int(chunks.group(1)) == ours.chunks
    assert ours.tokens == ours.chunks * (N_CTX - 1 - N_CTX // 2)
    assert ours.ppl == pytest.approx(float(m.group(1)), rel=2e-3)


def test_kl_divergence_orders_levels(models, text):
    with BaseLogProbs(models["base"], text, n_ctx=N_CTX) as base:
        tmp = base.file
        assert tmp.stat().st_size == base.ppl.tokens * base.n_vocab * 4  # on disk, not in RAM
        same = base.compare(models["base"])
        q8 = base.compare(models["Q8_0"])
        q2 = base.compare(models["Q2_K"])
    assert not tmp.exists()
    assert same.kld == pytest.approx(0.0, abs=1e-6) and same.same_top == 1.0 and same.delta_p == pytest.approx(0, abs=1e-7)
    assert same.ppl.ppl == pytest.approx(same.base_ppl.ppl, rel=1e-6)
    assert 0 < q8.kld < 0.02 < q2.kld
    assert q8.same_top > 0.9 > q2.same_top
    assert q2.delta_p < 0 and q2.ppl.ppl > q8.ppl.ppl
    assert q8.ppl.ppl == pytest.approx(q8.base_ppl.ppl, rel=0.01)  # Q8_0 within 1% of the base


def test_kl_divergence_function_and_perplexity_agree(models, text):
    r = kl_divergence(models["base"], models["Q8_0"], text, n_ctx=N_CTX)
    assert r.ppl.ppl == pytest.approx(perplexity(models["Q8_0"], text, n_ctx=N_CTX).ppl, rel=1e-5)


def test_text_too_short(models):
    with pytest.raises(UsageError, match=r"evaluation text too short: \d+ tokens, needs at least 128"):
        perplexity(models["base"], "Just a few words.", n_ctx=N_CTX)


def test_evaluator_tokenizes_like_llama_cpp(models):
    import llama_cpp

    with Evaluator(models["base"], n_ctx=N_CTX) as ev:
        ours = ev.tokenize("Hello world, this is SmolLM2.").tolist()
    llm = llama_cpp.Llama(str(models["base"]), n_ctx=64, verbose=False, vocab_only=True)
    try:
        assert ours == llm.tokenize("Hello world, this is SmolLM2.".encode(), add_bos=True)
    finally:
        llm.close()
