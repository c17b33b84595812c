"""A thinking model's reasoning through the chat completions, Responses and Messages APIs. SmolLM2 gets a
Qwen3-style template that opens `<think>` in the prompt (thinking.py): its reply then starts inside the
reasoning. The reference is the same prompt through /v1/completions (no splitting), split by `split_reasoning`; the splitter itself is tested on text in test_reasoning.py."""

from __future__ import annotations

import anthropic
import openai
import ollama
import pytest
from serving import WAIT_S, make_template_gguf, running
from thinking import SWITCHABLE_TEMPLATE, THINKING_TEMPLATE

from edgellm.engine.reasoning import split_reasoning

QUESTION = "What is 2+2?"
PROMPT = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n<think>\n"  # what the template renders
N = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running(str(make_template_gguf(tmp_path_factory.mktemp("think"), "think", THINKING_TEMPLATE)), "--parallel", "1", "--ctx", "256")


@pytest.fixture(scope="module")
def expected(server):
    raw = server.client().completions.create(model="any", prompt=PROMPT, temperature=0, max_tokens=N).choices[0].text
    reasoning, content = split_reasoning(raw, inside=True)
    assert reasoning  # SmolLM2 writes something inside the opened <think>
    return reasoning, content


ASK = [{"role": "user", "content": QUESTION}]


def test_chat_completions_give_reasoning_content(server, expected):
    c = server.client()
    r = c.chat.completions.create(model="any", messages=ASK, temperature=0, max_tokens=N)
    message = r.choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == expected
    chunks = list(c.chat.completions.create(model="any", messages=ASK, temperature=0, max_tokens=N, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas), "".join(d.content or "" for d in deltas)
    assert streamed == expected


def test_responses_give_a_reasoning_item(server, expected):
    c = server.client()
    r = c.responses.create(model="any", input=QUESTION, temperature=0, max_output_tokens=N)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert (r.output[0].content[0].text, r.output_text) == expected and r.output[0].content[0].type == "reasoning_text"
    events = list(c.responses.create(model="any", input=QUESTION, temperature=0, max_output_tokens=N, stream=True))
    assert [e.type for e in events[:4]] == ["response.created", "response.in_progress", "response.output_item.added", "response.reasoning_text.delta"]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == expected[0]
    assert [o.type for o in events[-1].response.output] == ["reasoning", "message"]
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_messages_give_a_thinking_block(server, expected):
    c = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0, timeout=WAIT_S)
    r = c.messages.create(model="any", max_tokens=N, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024}, extra_body={"temperature": 0})
    assert r.content[0].type == "thinking" and r.content[0].thinking == expected[0]
    assert "".join(b.text for b in r.content if b.type == "text") == expected[1]
    with c.messages.stream(model="any", max_tokens=N, messages=ASK, extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].thinking == expected[0] and final.stop_reason == "max_tokens"


def test_ollama_gives_thinking_beside_the_content(server, expected):
    o = ollama.Client(host=server.url, timeout=WAIT_S)
    name = o.list().models[0].model
    r = o.chat(model=name, messages=ASK, think=True, options={"temperature": 0, "num_predict": N})
    assert (r.message.thinking, r.message.content) == expected
    parts = list(o.chat(model=name, messages=ASK, think=True, options={"temperature": 0, "num_predict": N}, stream=True))
    assert ("".join(p.message.thinking or "" for p in parts), "".join(p.message.content for p in parts)) == expected
    g = o.generate(model=name, prompt=QUESTION, options={"temperature": 0, "num_predict": N})
    assert (g.thinking, g.response) == expected


@pytest.fixture(scope="module")
def switch_server(tmp_path_factory):
    gguf = make_template_gguf(tmp_path_factory.mktemp("switch"), "switch", SWITCHABLE_TEMPLATE)
    yield from running(str(gguf), "--parallel", "1", "--ctx", "256", "--no-think")


def test_thinking_is_switched_per_server_and_per_request(switch_server):
    c = switch_server.client()
    raw = c.completions.create(model="any", prompt=PROMPT, temperature=0, max_tokens=N).choices[0].text
    answer = c.completions.create(model="any", prompt=PROMPT + "\n</think>\n\n", temperature=0, max_tokens=N).choices[0].text
    thinking = split_reasoning(raw, inside=True)

    def ask(**extra):
        message = c.chat.completions.create(model="any", messages=ASK, temperature=0, max_tokens=N, **extra).choices[0].message
        return (message.model_extra or {}).get("reasoning_content"), message.content

    assert ask() == (None, answer)  # --no-think: the template closed an empty reasoning in the prompt
    assert ask(extra_body={"chat_template_kwargs": {"enable_thinking": True}}) == thinking
    assert ask(reasoning_effort="low") == thinking
    assert ask(reasoning_effort="low", extra_body={"chat_template_kwargs": {"enable_thinking": False}}) == (None, answer)
    o = ollama.Client(host=switch_server.url, timeout=WAIT_S)
    name = o.list().models[0].model
    r = o.chat(model=name, messages=ASK, think=True, options={"temperature": 0, "num_predict": N})
    assert (r.message.thinking, r.message.content) == thinking
    a = anthropic.Anthropic(base_url=switch_server.url, api_key="none", max_retries=0, timeout=WAIT_S)
    m = a.messages.create(model="any", max_tokens=N, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024}, extra_body={"temperature": 0})
    assert m.content[0].type == "thinking" and m.content[0].thinking == thinking[0]
    m = a.messages.create(model="any", max_tokens=N, messages=ASK, thinking={"type": "disabled"}, extra_body={"temperature": 0})
    assert [(b.type, b.text) for b in m.content] == [("text", answer)]
    for bad in ({"reasoning_effort": "lots"}, {"reasoning_effort": ["low"]}, {"chat_template_kwargs": {"enable_thinking": "yes"}}):
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="any", messages=ASK, max_tokens=1, extra_body=bad)
