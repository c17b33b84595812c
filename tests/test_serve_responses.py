"""OpenAI's Responses API on `edgellm serve`: the real `openai` client's `responses.create` (whole and streamed)
against the real SmolLM2, compared with what /v1/chat/completions gives for the same conversation, one raw event
stream read field by field through httpx2, function calls on a chat template that takes tools, and bad requests."""

from __future__ import annotations

import json

import openai
import pytest
from serving import TIME, WEATHER, Server, make_tools_gguf, running

SLOT_CTX = 512
ASK = "What is the capital of France? Answer in one sentence."
CAPITAL = [{"role": "user", "content": ASK}]
FLAT_WEATHER = {"type": "function", **WEATHER["function"]}  # the Responses API's flat tool shape
FLAT_TIME = {"type": "function", **TIME["function"]}
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
               "response.output_text.delta", "response.output_text.done", "response.content_part.done", "response.output_item.done",
               "response.completed"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running(str(make_tools_gguf(tmp_path_factory.mktemp("tools"))), "--parallel", "2", "--ctx", str(SLOT_CTX))


def chat(server: Server, messages, **kw):
    return server.client().chat.completions.create(model="any", messages=messages, temperature=0, **kw)


def test_a_response_is_the_chat_completion_of_the_same_conversation(server):
    c = server.client()
    expected = chat(server, CAPITAL, max_tokens=30)
    r = c.responses.create(model="smol", input=ASK, temperature=0, max_output_tokens=30)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "smol" and r.status == "completed"
    assert r.incomplete_details is None and r.error is None and r.store is False and r.previous_response_id is None
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed" and item.id.startswith("msg_")
    assert [p.type for p in item.content] == ["output_text"] and r.output_text == expected.choices[0].message.content
    assert (r.usage.input_tokens, r.usage.output_tokens) == (expected.usage.prompt_tokens, expected.usage.completion_tokens)
    assert r.usage.total_tokens == expected.usage.total_tokens and r.temperature == 0 and r.max_output_tokens == 30
    # instructions are the system message; a list of message items with input_text parts is the same conversation
    system = "You answer in French."
    turns = [{"role": "system", "content": system}, *CAPITAL, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Italy?"}]
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": ASK}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
             {"role": "user", "content": "And Italy?"}]
    r = c.responses.create(model="any", instructions=system, input=items, temperature=0, max_output_tokens=30)
    assert r.instructions == system and r.output_text == chat(server, turns, max_tokens=30).choices[0].message.content


def test_max_output_tokens_makes_an_incomplete_response(server):
    r = server.client().responses.create(model="any", input=ASK, temperature=0, max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens" and r.usage.output_tokens == 3
    assert r.output[0].status == "incomplete" and r.output_text


def test_a_stream_gives_the_documented_events_and_the_same_text(server):
    c = server.client()
    whole = c.responses.create(model="any", input=ASK, temperature=0, max_output_tokens=30)
    events = list(c.responses.create(model="any", input=ASK, temperature=0, max_output_tokens=30, stream=True))
    kinds = [e.type for e in events]
    assert [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]] == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == events[-1].response.output_text
    assert events[0].response.status == "in_progress" and events[-1].response.status == "completed"
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens
    with c.responses.stream(model="any", input=ASK, temperature=0, max_output_tokens=30) as stream:
        assert stream.get_final_response().output_text == text
    cut = list(c.responses.create(model="any", input=ASK, temperature=0, max_output_tokens=3, stream=True))
    assert cut[-1].type == "response.incomplete" and cut[-1].response.incomplete_details.reason == "max_output_tokens"


def test_the_raw_event_stream_field_by_field(server):
    body = {"model": "any", "input": "Hi", "temperature": 0, "max_output_tokens": 4, "stream": True}
    with server.http(key=None).stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    names = [e[0].removeprefix("event: ") for e in events]
    data = [json.loads(e[1].removeprefix("data: ")) for e in events]
    assert all(d["type"] == n for d, n in zip(data, names)) and [d["sequence_number"] for d in data] == list(range(len(data)))
    created, progress, added, part = data[:4]
    rid = created["response"]["id"]
    assert created["response"]["status"] == "in_progress" and created["response"]["output"] == [] and created["response"]["usage"] is None
    assert progress["response"]["id"] == rid and progress["type"] == "response.in_progress"
    item_id = added["item"]["id"]
    assert added == {"type": "response.output_item.added", "output_index": 0, "sequence_number": 2,
                     "item": {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}}
    assert part == {"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0, "sequence_number": 3,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}
    deltas = [d for d in data if d["type"] == "response.output_text.delta"]
    assert deltas and all(d["item_id"] == item_id and d["output_index"] == 0 and d["content_index"] == 0 for d in deltas)
    text = "".join(d["delta"] for d in deltas)
    text_done, part_done, item_done, last = data[-4:]
    assert text_done["type"] == "response.output_text.done" and text_done["text"] == text
    assert part_done["type"] == "response.content_part.done" and part_done["part"]["text"] == text
    assert item_done["item"] == {"id": item_id, "type": "message", "role": "assistant", "status": "incomplete",
                                 "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    final = last["response"]
    assert last["type"] == "response.incomplete" and final["id"] == rid and final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"} and final["output"] == [item_done["item"]]
    usage = final["usage"]
    assert usage["output_tokens"] == 4 and usage["total_tokens"] == usage["input_tokens"] + 4 and usage["input_tokens"] > 0


def test_a_forced_function_call_and_its_output_are_answered(server):
    c = server.client()
    ask = "What is the weather in Paris?"
    r = c.responses.create(model="any", input=ask, tools=[FLAT_WEATHER, FLAT_TIME], tool_choice={"type": "function", "name": "get_weather"},
                           temperature=0, max_output_tokens=60)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert r.status == "completed" and call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city", "unit"}
    result = '{"temperature": 18}'
    answer = c.responses.create(model="any", tools=[FLAT_WEATHER], temperature=0, max_output_tokens=30, input=[
        {"role": "user", "content": ask}, {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": result}])
    expected = chat(server, [{"role": "user", "content": ask},
                             {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function",
                                                                                     "function": {"name": call.name, "arguments": call.arguments}}]},
                             {"role": "tool", "tool_call_id": call.call_id, "content": result}], tools=[WEATHER], max_tokens=30)
    assert answer.output_text == expected.choices[0].message.content and answer.output_text
    events = list(c.responses.create(model="any", input=ask, tools=[FLAT_WEATHER], tool_choice="required", temperature=0, max_output_tokens=60,
                                     stream=True))
    kinds = [e.type for e in events]
    assert kinds[-5:] == ["response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"]
    (streamed,) = [o for o in events[-1].response.output if o.type == "function_call"]
    assert streamed.name == "get_weather" and json.loads(streamed.arguments) == json.loads(events[-3].arguments)


@pytest.mark.parametrize("body, param, words", [
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses"),
    ({"input": [{"type": "web_search_call"}]}, "input[0]", "not 'web_search_call'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0].image_url", "takes no images"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}]}, "input[0].content[0]", "input_image"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]", "only function tools"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", "integer from 1"),
    ({"input": []}, "input", "non-empty list"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format", "json_schema"),
])
def test_bad_requests_are_400s_that_name_the_field(server, body, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().responses.create(model="any", **body)
    error = err.value.body
    assert err.value.status_code == 400 and error["param"] == param and words in error["message"], error
    assert server.client().responses.create(model="any", input="Hi", max_output_tokens=2).status == "incomplete"
