"""A model's chat template is untrusted code: it renders like transformers' sandbox when honest, and a
hostile one is stopped by the budget with one EdgeError, never a hang, a traceback or a full memory."""

from __future__ import annotations

import sys

import pytest

from edgellm.engine import chat_template
from edgellm.errors import EdgeError
from edgellm.formats.gguf_info import read_gguf
from fixtures import CHATML_TEMPLATE, LLAMA3_CKPT_TEMPLATE, MISTRAL_TEMPLATE, smollm2_gguf

HI = [{"role": "user", "content": "hi"}]

HOSTILE = {  # template -> what the refusal says
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
    "nested loops over a list": (
        "{% set r = range(100000)|list %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", "steps"),
    "work inside filters": ("{% for i in range(100000) %}{{ range(100000)|sum }}{% endfor %}", "steps"),
    "a loop inside Jinja's own code": ("{{ [1]|slice(10**8)|list|length }}", "steps"),
    "one huge string": ("{{ 'x' * 10**10 }}", "steps"),
    "many large strings": ("{% for i in range(100000) %}{% set s = 'x' * 100000 %}{% endfor %}", "steps"),
    "a huge number": ("{{ 10 ** 1000000000 }}", "bits"),
    "a huge prompt": ("{% for i in range(100000) %}{% for j in range(100) %}{{ '" + "x" * 100 + "' }}{% endfor %}"
                      "{% endfor %}", "characters"),
    "a range too big": ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
    "endless recursion": ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
    "division by zero": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "lorem ipsum of any length": ("{{ lipsum(10**7) }}", "'lipsum' is undefined"),
    "nesting deeper than Python's parser": ("{{ " + "(" * 1000 + "1" + ")" * 1000 + " }}", "nested too deeply"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_templates_are_stopped_with_one_line(case):
    template, said = HOSTILE[case]
    with pytest.raises(EdgeError) as exc:
        chat_template.render(template, HI)
    message = str(exc.value)
    assert "chat template" in message and said in message and "\n" not in message, message


def test_work_no_step_sees_is_stopped_by_the_clock(monkeypatch):
    # A wide `center` is one call into C: only the time limit sees it (each costs milliseconds, 10**5 of them).
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 0.2)
    with pytest.raises(EdgeError, match=r"exceeded its budget \(more than 0.2 s\)"):
        chat_template.render("{% for i in range(100000) %}{% set s = 'x'|center(10**7) %}{% endfor %}", HI)


def _plain_sandbox(template: str, messages: list[dict]) -> str:
    """How transformers renders: the immutable sandbox, no budget."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="<s>",
                                            eos_token="</s>", tools=None, documents=None)


@pytest.mark.parametrize("name", ["smollm2", "llama3", "chatml", "mistral"])
def test_honest_templates_render_long_chats_as_without_a_budget(name):
    template = {"smollm2": read_gguf(smollm2_gguf()).chat_template, "llama3": LLAMA3_CKPT_TEMPLATE,
                "chatml": CHATML_TEMPLATE, "mistral": MISTRAL_TEMPLATE}[name]
    chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "words " * 50}
            for i in range(5000)]
    ours = chat_template.render(template, chat, bos_token="<s>", eos_token="</s>")
    assert ours == _plain_sandbox(template, chat) and len(ours) > 5000 * 300


def test_a_tracer_already_running_is_back_after_a_render():
    seen = []

    def tracer(frame, event, arg):
        seen.append(event)

    sys.settrace(tracer)
    try:
        chat_template.render(None, HI)
        with pytest.raises(EdgeError):
            chat_template.render("{{ 1 / 0 }}", HI)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
