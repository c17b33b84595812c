"""`edgellm run` with a thinking model: the answer on stdout, the reasoning only on request (stderr) or in
--json, and --think/--no-think through the template's enable_thinking. SmolLM2 thinks through the templates of
thinking.py; the reference is the engine's raw continuation of the same prompt, split by `split_reasoning`."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from thinking import reference, template_files

QUESTION = "What is 2+2?"
N = 24
GREEDY = ("--temp", "0", "-n", str(N))


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    return template_files(tmp_path_factory.mktemp("think"))


def _reference(template: str, think: bool | None) -> tuple[str | None, str]:
    return reference(template, QUESTION, N, think)


def _run(capsys, *args):
    code, out, err = run_cli(capsys, "run", "-p", QUESTION, *GREEDY, *args)
    assert code == 0, err
    return out, err


def test_the_reasoning_stays_off_stdout(capsys, templates):
    reasoning, answer = _reference(templates["switch"], None)
    assert reasoning and answer == ""  # SmolLM2 never closes the opened thinking within N tokens
    out, err = _run(capsys, "--chat-template", templates["switch"])
    assert out == "\n" and reasoning not in err
    assert f"reply: {N} tokens ({N} thinking)" in err
    out, err = _run(capsys, "--chat-template", templates["switch"], "--show-thinking")
    assert out == "\n" and f"<think>\n{reasoning}\n</think>\n" in err  # stderr is no terminal here: delimited, not dimmed
    data = json.loads(_run(capsys, "--chat-template", templates["switch"], "--json")[0])
    assert (data["reasoning"], data["text"]) == (reasoning, answer)
    assert data["stats"]["thinking_tokens"] == data["stats"]["gen_tokens"] == N


def test_no_think_answers_at_once(capsys, templates):
    reasoning, answer = _reference(templates["switch"], False)
    assert reasoning is None and answer  # the prompt closed an empty reasoning: all of the reply is the answer
    out, err = _run(capsys, "--chat-template", templates["switch"], "--no-think")
    assert out == answer + "\n" and "thinking" not in err.split("reply:")[1].split("·")[0]
    data = json.loads(_run(capsys, "--chat-template", templates["switch"], "--no-think", "--json")[0])
    assert (data["reasoning"], data["text"], data["stats"]["thinking_tokens"]) == (None, answer, 0)


def test_a_template_without_the_switch_says_so(capsys, templates):
    plain_out, _ = _run(capsys)
    out, err = _run(capsys, "--think")  # the demo model's own template does not think at all
    assert out == plain_out and "note: thinking cannot be switched on with this chat template (the model does not think): ignored" in err
    data = json.loads(_run(capsys, "--json")[0])
    assert (data["reasoning"], data["text"] + "\n", data["stats"]["thinking_tokens"]) == (None, plain_out, 0)
    reasoning, _ = _reference(templates["think"], None)
    out, err = _run(capsys, "--chat-template", templates["think"], "--no-think", "--show-thinking")
    assert "note: thinking cannot be switched off with this chat template (it does not read enable_thinking): ignored" in err
    assert out == "\n" and f"<think>\n{reasoning}\n</think>\n" in err
