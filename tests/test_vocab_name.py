"""Tokenization that does not depend on what a model is called: llama.cpp sets up Phi-3's special tokens by the
file's general.name, and edgellm loads a renamed Phi-3 file as one named Phi-3."""

from __future__ import annotations

import pytest

from conftest import llama
from gguf_edit import copy_gguf

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there\n  friend"}]


@pytest.fixture(scope="module")
def renamed(converted, tmp_path_factory):
    return copy_gguf(converted("phi3", "f16"), tmp_path_factory.mktemp("renamed") / "assistant.gguf",
                     {"general.name": "My Assistant"})


@pytest.mark.slow
def test_a_renamed_phi3_file_tokenizes_chat_turns_as_transformers(renamed, hf_tokenizer):
    from edgellm.engine.launch import plan_model
    from edgellm.engine.runtime import Engine
    from edgellm.formats.gguf_info import read_gguf

    assert read_gguf(renamed).metadata["general.name"] == "My Assistant"
    tok = hf_tokenizer("phi3")
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    expected = tok(prompt, add_special_tokens=False)["input_ids"]
    # llama.cpp alone goes by the name: the turn tokens keep the newline after them, unlike transformers
    assert llama(renamed, vocab_only=True).tokenize(prompt.encode(), add_bos=False, special=True) != expected
    with Engine.load(plan_model(renamed, ctx=512, threads=1)) as engine:
        assert engine.tokenize(prompt, add_bos=False) == expected
