"""Anthropic's Messages API on `edgellm serve`: the real `anthropic` client against the real SmolLM2, compared
with what the OpenAI endpoint gives for the same messages, and the event stream read event by event through
httpx2."""

from __future__ import annotations

import json

import anthropic
import pytest

from edgellm.serve.api import MAX_BODY
from serving import ANTHROPIC_TIME, KEY, WAIT_S, Server

SLOT_CTX = 512
CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
GREEDY = {"temperature": 0}  # this `anthropic` release no longer sends temperature itself
EVENT_ORDER = ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]


@pytest.fixture(scope="module")
def server():
    s = Server("--parallel", "2", "--ctx", str(SLOT_CTX), "--api-key", KEY)
    yield s
    rc, log = s.interrupt()
    assert rc == 130 and "Traceback" not in log, log


def client(server: Server, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=WAIT_S)


def create(server: Server, messages=CAPITAL, max_tokens: int = 30, **kw):
    return client(server).messages.create(model="claude-any", max_tokens=max_tokens, messages=messages, extra_body=GREEDY, **kw)


def test_messages_give_the_openai_reply_with_usage(server):
    expected = server.client().chat.completions.create(model="any", messages=CAPITAL, temperature=0, max_tokens=30)
    r = create(server)
    assert r.type == "message" and r.role == "assistant" and r.model == "claude-any" and r.id.startswith("msg_")
    assert [b.type for b in r.content] == ["text"] and r.content[0].text == expected.choices[0].message.content
    assert r.stop_reason == "end_turn" and r.stop_sequence is None
    assert r.usage.input_tokens == expected.usage.prompt_tokens and r.usage.output_tokens == expected.usage.completion_tokens
    assert client(server).messages.count_tokens(model="any", messages=CAPITAL).input_tokens == expected.usage.prompt_tokens


def test_system_turns_stop_sequences_and_max_tokens(server):
    system = "You answer in French."
    expected = server.client().chat.completions.create(model="any", temperature=0, max_tokens=30, messages=[
        {"role": "system", "content": system}, *CAPITAL, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}])
    turns = [*CAPITAL, {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
             {"role": "user", "content": [{"type": "text", "text": "And of Italy?"}]}]
    r = create(server, turns, system=[{"type": "text", "text": system}])
    assert r.content[0].text == expected.choices[0].message.content
    whole = create(server).content[0].text
    word = whole.split()[3]
    cut = create(server, stop_sequences=["@@", word])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == word and cut.content[0].text == whole[: whole.index(word)]
    short = create(server, max_tokens=3)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_stream_events_come_in_anthropics_order(server):
    with client(server).messages.stream(model="any", max_tokens=30, messages=CAPITAL, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == create(server).content[0].text and final.stop_reason == "end_turn"
    body = {"model": "any", "max_tokens": 4, "messages": CAPITAL, "stream": True, **GREEDY}
    with server.http(key=None).stream("POST", "/v1/messages", json=body, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    names = [e[0].removeprefix("event: ") for e in events]
    data = [json.loads(e[1].removeprefix("data: ")) for e in events]
    assert [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]] == EVENT_ORDER
    assert all(d["type"] == n for d, n in zip(data, names))
    start = data[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert data[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [d["delta"] for d in data if d["type"] == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas) and "".join(d["text"] for d in deltas)
    assert data[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None} and data[-2]["usage"]["output_tokens"] == 4


def test_output_config_format_follows_the_schema(server):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": False}
    r = create(server, [{"role": "user", "content": "Give the capital of France as JSON."}], max_tokens=40,
               output_config={"format": {"type": "json_schema", "schema": schema}})
    assert set(json.loads(r.content[0].text)) == {"city"}


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, words",
    [
        ({"max_tokens": 5, "messages": CAPITAL}, "'model' is required"),
        ({"model": "m", "messages": CAPITAL}, "'max_tokens' is required"),
        ({"model": "m", "max_tokens": 0, "messages": CAPITAL}, "'max_tokens' must be an integer from 1"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "'messages' must be a non-empty list"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]}, "messages[0].role must be 'user' or 'assistant'"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "content[0].source must be"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "not 'document'"),
        ({"model": "m", "max_tokens": 5, "messages": [*CAPITAL, {"role": "assistant", "content": "The"}]}, "a prefill) is not supported"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "temperature": 1.5}, "'temperature' must be a number from 0 to 1"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "top_k": -2}, "'top_k' must be an integer"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "stop_sequences": "x"}, "'stop_sequences' must be a list"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "stop_sequences": [""]}, "each 'stop_sequences' string must be 1"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "system": 5}, "system must be a string or a list of text blocks"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "stream": 1}, "'stream' must be true or false"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "thinking": {"type": "enabled", "budget_tokens": 1024}}, "does not think"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "tools": [{"name": "a b", "input_schema": {}}]}, "tools[0] must be"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "tools": [ANTHROPIC_TIME], "tool_choice": {"type": "tool", "name": "x"}},
         "'tool_choice.name' must be one of"),
        ({"model": "m", "max_tokens": 5, "messages": CAPITAL, "output_config": {"format": {"type": "yaml"}}}, "'output_config.format' must be"),
    ],
)
def test_bad_requests_get_400_in_anthropics_shape(server, body, words):
    r = server.http().post("/v1/messages", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error" and words in r.json()["error"]["message"], r.text


def test_limits_and_the_key_answer_in_anthropics_shape(server):
    with pytest.raises(anthropic.BadRequestError) as e:
        create(server, [{"role": "user", "content": "word " * 600}])
    assert f"a slot's context holds {SLOT_CTX}" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(server, key="wrong").messages.create(model="m", max_tokens=5, messages=CAPITAL)
    assert e.value.body["error"]["type"] == "authentication_error"
    r = server.http(key=None).post("/v1/messages/count_tokens", json={"model": "m", "messages": CAPITAL}, headers={"x-api-key": KEY})
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    r = server.http(key=None).post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": CAPITAL}, headers={"x-api-key": "wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    big = b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "' + b"a" * (MAX_BODY + (1 << 20)) + b'"}]}'
    r = server.http().post("/v1/messages", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = server.http().get("/v1/messages")
    assert r.status_code == 405 and r.json()["type"] == "error"
