"""`edgellm inspect` on real GGUF files: the shipped SmolLM2 Q4_1 and a fresh conversion."""

from __future__ import annotations

import json

import pytest

import fixtures
from edgellm.cli import main
from edgellm.quantize.convert import convert_checkpoint


@pytest.fixture(scope="module")
def qwen2_gguf(tmp_path_factory):
    return convert_checkpoint(fixtures.qwen2_checkpoint(), tmp_path_factory.mktemp("inspect") / "qwen2.gguf", progress=False)


def test_json_report_matches_llamacpp(capsys):
    import llama_cpp

    path = fixtures.smollm2_gguf()
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    llm = llama_cpp.Llama(str(path), n_ctx=64, verbose=False)
    assert data["arch"] == "llama" and data["file_type"] == "Q4_1"
    assert data["n_vocab"] == llm.n_vocab()
    assert data["n_ctx_train"] == llm._model.n_ctx_train()
    assert data["n_embd"] == llm.n_embd()
    assert data["n_params"] == llm._model.n_params()
    assert data["metadata"]["general.architecture"] == llm.metadata["general.architecture"]
    assert data["chat_template"] == llm.metadata["tokenizer.chat_template"]
    assert len(data["tensors"]) == 272 and data["tensors"][0]["name"] == "token_embd.weight"
    assert sum(t["count"] for t in data["tensor_types"].values()) == 272
    assert data["metadata"]["tokenizer.ggml.tokens"] == "<array of 49152>"  # long arrays summarised


def test_table_report(qwen2_gguf, capsys):
    assert main(["inspect", str(qwen2_gguf)]) == 0
    out = capsys.readouterr().out
    for text in ("qwen2", "ALL_F32", "qwen2.block_count", "tokenizer.ggml.pre", "token_embd.weight", "blk.0.attn_q.bias", "tensors (15 of 27"):
        assert text in out, text
    assert "blk.1.attn_q.bias" not in out
    assert main(["inspect", str(qwen2_gguf), "--tensors"]) == 0
    assert "blk.1.attn_q.bias" in capsys.readouterr().out


@pytest.mark.parametrize("content,message", [(None, "no such file"), (b"not a gguf file", "not a GGUF file"), (b"GGUF\x03\x00", "corrupt GGUF")])
def test_bad_files(tmp_path, capsys, content, message):
    path = tmp_path / "x.gguf"
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgellm: ") and message in err and len(err.strip().splitlines()) == 1


def test_convert_json_summary(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["convert", str(fixtures.mistral_checkpoint()), "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(out) and data["arch"] == "llama" and data["file_type"] == "F16" and data["n_vocab"] == 800
