"""GGUFs without a chat template get the format their vocabulary implies, and --chat-template overrides it:
real vocabularies through the real llama.cpp, transformers' rendering of each model's own template as the oracle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fixtures
from edgellm.engine.chat_formats import BY_NAME, FALLBACK, infer
from edgellm.engine.launch import open_engine
from gguf_edit import copy_gguf

EDGELLM = str(Path(sys.executable).parent / "edgellm")
CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
# format -> a test checkpoint whose vocabulary implies it (the `converted` fixture's names)
CHECKPOINTS = {"llama3": "llama3", "gemma": "gemma3", "phi3": "phi3", "chatml": "qwen2", "mistral": "mistral"}


@pytest.mark.parametrize("tokens, spm, name", [
    ({"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"}, False, "llama3"),
    ({"<start_of_turn>", "<end_of_turn>"}, True, "gemma"),
    ({"<|user|>", "<|assistant|>", "<|end|>"}, True, "phi3"),
    ({"<|im_start|>", "<|im_end|>"}, False, "chatml"),
    (set(), True, "mistral"),
    (set(), False, "chatml"),
    ({"<start_of_turn>"}, False, "chatml"),  # half a format is no format
])
def test_inference_table(tokens, spm, name):
    assert infer(tokens.__contains__, "spm" if spm else None).name == name
    assert FALLBACK.name == "chatml"


@pytest.fixture(scope="module")
def stripped(tmp_path_factory, converted):
    """format -> each checkpoint converted, and the same file without its chat template."""
    d = tmp_path_factory.mktemp("formats")
    out = {}
    for name, checkpoint in CHECKPOINTS.items():
        full = converted(checkpoint)
        out[name] = (full, copy_gguf(full, d / f"{name}-bare.gguf", {"tokenizer.chat_template": None}))
    return out


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_a_file_without_a_template_gets_its_vocabulary_s_format(stripped, name):
    full, bare = stripped[name]
    with open_engine(full, ctx=512) as e:
        assert e.template_origin == "the model's own"
    with open_engine(bare, ctx=512) as e:
        assert e.template_origin == f"{name} (the file has none; inferred from its vocabulary)"
        prompt = e.render_chat(CHAT)
    for turn in CHAT:
        assert turn["content"] in prompt


@pytest.mark.parametrize("name", ["llama3", "gemma", "phi3", "chatml"])
def test_inferred_format_renders_like_the_model_s_own_template(stripped, hf_tokenizer, name):
    """The oracle: transformers renders the checkpoint's own template; the inferred format gives the same tokens."""
    _, bare = stripped[name]
    theirs = hf_tokenizer(CHECKPOINTS[name]).apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    with open_engine(bare, ctx=512) as e:
        ours = e.render_chat(CHAT)
        assert e.tokenize(ours) == e.tokenize(theirs), (ours, theirs)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGELLM, "run", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bare_smollm2(tmp_path_factory):
    return copy_gguf(fixtures.smollm2_gguf(), tmp_path_factory.mktemp("bare") / "smollm2-bare.gguf",
                     {"tokenizer.chat_template": None})


QUESTION = ["-p", "What is the capital of France? Answer in one sentence.", "--temp", "0", "-n", "24"]


def test_a_real_model_without_its_template_answers_as_with_it(bare_smollm2):
    """SmolLM2's own template adds a default system message when there is none; given one, both render the same
    prompt and the replies are identical."""
    system = ["-s", "You are a helpful assistant."]
    own, bare = run(str(fixtures.smollm2_gguf()), *QUESTION, *system), run(str(bare_smollm2), *QUESTION, *system)
    assert own.returncode == 0 and bare.returncode == 0, bare.stderr
    assert "Paris" in own.stdout and bare.stdout == own.stdout
    assert "note: chat format chatml (the file has none; inferred from its vocabulary)" in bare.stderr
    assert "chat format" not in own.stderr
    assert "Paris" in run(str(bare_smollm2), *QUESTION).stdout


def test_chat_template_option_takes_a_format_or_a_file(bare_smollm2, tmp_path):
    r = run(str(fixtures.smollm2_gguf()), *QUESTION, "--chat-template", "gemma")
    assert r.returncode == 0 and "note: chat format gemma (--chat-template)" in r.stderr
    f = tmp_path / "mine.jinja"
    f.write_text(BY_NAME["chatml"].source)
    r = run(str(bare_smollm2), *QUESTION, "--chat-template", str(f))
    assert r.returncode == 0 and "Paris" in r.stdout and "note: chat format mine.jinja (--chat-template)" in r.stderr


def test_unknown_chat_template_is_one_line():
    r = run("-p", "hi", "--chat-template", "nosuch")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "edgellm: --chat-template must be a format (llama3, gemma, phi3, chatml, mistral) or a template file, not nosuch"
    ]
