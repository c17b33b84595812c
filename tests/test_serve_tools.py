"""Tool calls through Anthropic's and Ollama's APIs, on SmolLM2 with a chat template that takes tools: the real
`anthropic` and `ollama` clients, checked against the calls the OpenAI endpoint gives for the same request."""

from __future__ import annotations

import json

import anthropic
import ollama
import pytest
from ollama._client import _copy_tools

from serving import ANTHROPIC_TIME, ANTHROPIC_WEATHER, TIME, WAIT_S, WEATHER, Server, make_tools_gguf

SLOT_CTX = 512
GREEDY = {"temperature": 0}  # sent as an extra field: this `anthropic` release no longer has the argument

WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    s = Server(str(make_tools_gguf(tmp_path_factory.mktemp("tools"))), "--parallel", "1", "--ctx", str(SLOT_CTX))
    yield s
    rc, log = s.interrupt()
    assert rc == 130 and "Traceback" not in log, log


def client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0, timeout=WAIT_S)



def test_a_forced_tool_comes_back_as_a_tool_use_block_and_its_result_is_answered(tools_server):
    c = client(tools_server)
    r = c.messages.create(model="any", max_tokens=60, messages=WEATHER_ASK, tools=[ANTHROPIC_WEATHER, ANTHROPIC_TIME],
                          tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    assert r.stop_reason == "tool_use"
    (use,) = [b for b in r.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id.startswith("toolu_") and set(use.input) == {"city", "unit"}
    answer = c.messages.create(model="any", max_tokens=30, tools=[ANTHROPIC_WEATHER], extra_body=GREEDY, messages=[
        *WEATHER_ASK, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": '{"temperature": 18}'}]}])
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].text
    with c.messages.stream(model="any", max_tokens=60, messages=WEATHER_ASK, tools=[ANTHROPIC_WEATHER, ANTHROPIC_TIME],
                           tool_choice={"type": "any"}, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed.name in ("get_weather", "get_time") and isinstance(streamed.input, dict)


def test_ollama_tools_reach_the_template_as_openais_do_and_earlier_calls_are_answered(tools_server):
    """SmolLM2-135M does not call functions unprompted (Ollama has no tool_choice to force one): what is checked is
    that the tools and an earlier call with its result make the same prompt, so the same reply, as through OpenAI's API."""
    o = ollama.Client(host=tools_server.url, timeout=WAIT_S)
    name = o.list().models[0].model
    sent = [t.model_dump(exclude_none=True) for t in _copy_tools([WEATHER, TIME])]  # the tools as the ollama client sends them
    expected = tools_server.client().chat.completions.create(model="any", messages=WEATHER_ASK, tools=sent, temperature=0, max_tokens=40)
    r = o.chat(model=name, messages=WEATHER_ASK, tools=[WEATHER, TIME], options={"temperature": 0, "num_predict": 40})
    assert r.message.content == expected.choices[0].message.content and not r.message.tool_calls and not expected.choices[0].message.tool_calls
    streamed = o.chat(model=name, messages=WEATHER_ASK, tools=[WEATHER, TIME], options={"temperature": 0, "num_predict": 40}, stream=True)
    assert "".join(p.message.content for p in streamed) == r.message.content
    args = {"city": "Paris", "unit": "celsius"}
    history = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": args}}]},
               {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": 18}'}]
    openai_history = [{"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function",
                                                                           "function": {"name": "get_weather", "arguments": json.dumps(args)}}]},
                      {"role": "tool", "tool_call_id": "c0", "content": '{"temperature": 18}'}]
    answer = o.chat(model=name, messages=[*WEATHER_ASK, *history], tools=[WEATHER], options={"temperature": 0, "num_predict": 30})
    expected = tools_server.client().chat.completions.create(model="any", messages=[*WEATHER_ASK, *openai_history], temperature=0, max_tokens=30,
                                                             tools=[t.model_dump(exclude_none=True) for t in _copy_tools([WEATHER])])
    assert answer.message.content == expected.choices[0].message.content and answer.message.content


def test_ollama_gets_a_tool_call_back_streamed_or_not(tools_server):
    """Two earlier calls in the conversation lead the model to call the function again: the ollama client gets
    the call as Ollama's `tool_calls` (arguments an object, not a string), whole or streamed."""
    o = ollama.Client(host=tools_server.url, timeout=WAIT_S)
    name = o.list().models[0].model

    def earlier(city: str) -> list[dict]:
        return [{"role": "user", "content": f"What is the weather in {city}?"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": city, "unit": "celsius"}}}]},
                {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": 18}'},
                {"role": "assistant", "content": f"It is 18 degrees in {city}."}]

    messages = [*earlier("London"), *earlier("Tokyo"), *WEATHER_ASK]
    options = {"temperature": 0, "num_predict": 60}
    r = o.chat(model=name, messages=messages, tools=[WEATHER, TIME], options=options)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris", "unit": "celsius"}
    assert r.message.content == "" and r.done_reason == "stop"
    parts = list(o.chat(model=name, messages=messages, tools=[WEATHER, TIME], options=options, stream=True))
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [(call.function.name, call.function.arguments)]
    assert parts[-1].done and "<tool_call>" not in "".join(p.message.content for p in parts)
