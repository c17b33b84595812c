"""`edgellm serve` end to end: the installed command in a subprocess, the real SmolLM2 through llama.cpp, and
the real `openai` client (raw HTTP through httpx2 where the wire format itself is what is checked)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from pathlib import Path

import httpx2
import openai
import pytest

from serving import EDGELLM, KEY, TIME, WAIT_S, WEATHER, Server, make_tools_gguf

SLOT_CTX = 512
CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    s = Server("--parallel", "4", "--ctx", str(SLOT_CTX), "--api-key", KEY, "--cors", "http://app.test")
    yield s
    rc, log = s.interrupt()
    assert rc == 130 and "Traceback" not in log, log


@pytest.fixture(scope="module")
def tools_gguf(tmp_path_factory) -> Path:
    """SmolLM2 with a chat template that takes tools."""
    return make_tools_gguf(tmp_path_factory.mktemp("tools"))


@pytest.fixture(scope="module")
def one_slot(tools_gguf):
    """One slot, no waiting room, no API key, no CORS; a model whose template takes tools."""
    s = Server(str(tools_gguf), "--parallel", "1", "--queue", "0", "--ctx", str(SLOT_CTX))
    yield s
    if s.proc.poll() is None:
        s.interrupt()


def chat(client: openai.OpenAI, messages=CAPITAL, **kw):
    return client.chat.completions.create(model="any", messages=messages, **{"temperature": 0, "max_tokens": 24, **kw})


def streamed(client: openai.OpenAI, messages=CAPITAL, **kw) -> str:
    stream = client.chat.completions.create(model="any", messages=messages, stream=True, **{"temperature": 0, "max_tokens": 24, **kw})
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def sse_lines(response: httpx2.Response) -> list[str]:
    return [line for line in response.iter_lines() if line]


# --- what a client gets --------------------------------------------------------------------------------


def test_chat_gives_what_edgellm_run_gives(server):
    r = chat(server.client(), max_tokens=30)
    run = subprocess.run([EDGELLM, "run", "-p", CAPITAL[0]["content"], "--temp", "0", "-n", "30", "--json", "-t", "1"],
                         capture_output=True, text=True, timeout=WAIT_S)
    expected = json.loads(run.stdout)
    assert r.choices[0].message.content == expected["text"] == "The capital of France is Paris."
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == expected["stats"]["prompt_tokens"]
    assert r.usage.completion_tokens == expected["stats"]["gen_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    evaluated = server.metric("prompt_tokens_evaluated_total")
    assert chat(server.client(), max_tokens=30).choices[0].message.content == expected["text"]
    assert server.metric("prompt_tokens_evaluated_total") == evaluated + 1  # the slot still held the prompt


def test_stream_sends_the_same_reply_as_events_ending_in_done(server):
    client = server.client()
    assert streamed(client) == chat(client).choices[0].message.content
    body = {"messages": CAPITAL, "temperature": 0, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with server.http().stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = sse_lines(r)
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_completion_stop_and_length(server):
    client = server.client()
    free = client.completions.create(model="any", prompt="The capital of France is", max_tokens=12, temperature=0)
    text = free.choices[0].text
    assert free.choices[0].finish_reason == "length" and free.usage.completion_tokens == 12
    word = text.split()[2]
    cut = client.completions.create(model="any", prompt="The capital of France is", max_tokens=12, temperature=0, stop=["@@", word])
    assert cut.choices[0].text == text[: text.index(word)]
    assert cut.choices[0].finish_reason == "stop"
    k = text.index(" " + text.split()[3])
    across = text[k - 2 : k + 3]  # the end of one token and the start of the next: held back, then cut
    cut = client.completions.create(model="any", prompt="The capital of France is", max_tokens=12, temperature=0, stop=across)
    assert cut.choices[0].text == text[: text.index(across)]
    parts = client.completions.create(model="any", prompt="The capital of France is", max_tokens=12, temperature=0, stream=True)
    assert "".join(p.choices[0].text for p in parts) == text


def test_models_lists_the_model_with_its_slot_context(server):
    models = server.client().models.list().data
    assert len(models) == 1
    m = models[0].model_dump()
    assert m["context_length"] == SLOT_CTX
    assert m["meta"]["slots"] == 4 and m["meta"]["n_ctx_total"] == 4 * SLOT_CTX
    assert m["meta"]["plan"]["level"] == "Q4_1"


def test_seed_repeats_a_sampled_reply_and_penalties_change_it(server):
    client = server.client()
    a, b = (chat(client, temperature=0.9, seed=7, max_tokens=16).choices[0].message.content for _ in range(2))
    assert a == b
    animals = [{"role": "user", "content": "List twenty animals, one per line."}]
    plain = chat(client, animals, max_tokens=32, extra_body={"repeat_penalty": 1.0}).choices[0].message.content
    penalized = chat(client, animals, max_tokens=32, frequency_penalty=2.0, extra_body={"repeat_penalty": 1.0}).choices[0].message.content
    assert plain != penalized


def test_json_schema_reply_parses_and_follows_the_schema(server):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = chat(server.client(), [{"role": "user", "content": "Give the capital of France and its population as JSON."}], max_tokens=60,
             response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    reply = json.loads(r.choices[0].message.content)
    assert set(reply) == {"city", "population"}
    assert isinstance(reply["city"], str) and len(reply["city"]) <= 20
    assert isinstance(reply["population"], int) and not isinstance(reply["population"], bool)
    anything = chat(server.client(), [{"role": "user", "content": "Describe a cat in JSON."}], max_tokens=60,
                    response_format={"type": "json_object"})
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert anything.choices[0].message.content.lstrip().startswith("{")


def test_a_prompt_too_long_for_a_slot_is_refused_with_the_numbers(server):
    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(openai.BadRequestError) as e:
        chat(server.client(), long)
    err = e.value.body
    assert err["code"] == "context_length_exceeded"
    assert err["n_ctx"] == SLOT_CTX and err["prompt_tokens"] > SLOT_CTX
    assert f"{err['prompt_tokens']} tokens" in err["message"] and str(SLOT_CTX) in err["message"]


def test_a_reply_that_fills_the_slot_ends_with_length(server):
    r = server.client().completions.create(model="any", prompt="word " * 450, max_tokens=5000, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens < 5000
    assert r.usage.total_tokens == SLOT_CTX + 1  # the last token is sampled from the full slot, never stored


# --- many clients ---------------------------------------------------------------------------------------


def test_four_parallel_greedy_streams_equal_each_run_alone(server):
    client = server.client()
    questions = ["Write a haiku about the sea.", "List three colors.", "What is 2+2?", "Tell me a short story about a cat."]
    asks = [[{"role": "user", "content": q}] for q in questions]
    alone = [streamed(client, a, max_tokens=32) for a in asks]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda a: streamed(client, a, max_tokens=32), asks))
    assert together == alone
    assert all(together)


HELD = "serve.token:3"  # the first reply that sends its third token waits there until its client leaves or Ctrl-C


@pytest.fixture
def held(tools_gguf):
    """One slot, no waiting room; its first reply is held mid-stream (see HELD)."""
    s = Server(str(tools_gguf), "--parallel", "1", "--queue", "0", "--ctx", str(SLOT_CTX), "--api-key", KEY, pause=HELD)
    yield s
    if s.proc.poll() is None:
        s.interrupt()


def held_stream(server: Server):
    """A streamed reply that the server holds after its third token: (response context, its lines)."""
    body = {"messages": CAPITAL, "max_tokens": SLOT_CTX, "ignore_eos": True, "stream": True}
    return server.http().stream("POST", "/v1/chat/completions", json=body)


def wait_held(server: Server) -> None:
    deadline = time.monotonic() + WAIT_S
    while f"edgellm-test: paused at {HELD}\n" not in server.log:
        assert time.monotonic() < deadline and server.proc.poll() is None, "the reply was never held"
        time.sleep(0.02)


def test_a_client_that_disconnects_frees_its_slot(held):
    cancelled = held.metric("requests_cancelled_total")
    with held_stream(held) as r:
        lines = r.iter_lines()
        next(lines)
        wait_held(held)  # the reply is under way, and stays so until the client leaves
        assert held.health()["slots_processing"] == 1
    held.wait_idle()
    assert held.metric("requests_cancelled_total") == cancelled + 1  # ended by the client, not by length or stop
    metrics = held.http().get("/metrics").text
    for name in ("requests_total", "prompt_tokens_total", "tokens_per_second", "queue_depth", "slots_busy", "threads"):
        assert f"\nedgellm_{name}" in metrics
    assert 'edgellm_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics


def test_a_full_queue_answers_503_with_retry_after(held):
    with held_stream(held) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)
        wait_held(held)
        busy = held.http().post("/v1/chat/completions", json={"messages": CAPITAL, "max_tokens": 2})
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["error"]["message"]
    held.wait_idle()
    assert held.http().post("/v1/chat/completions", json={"messages": CAPITAL, "max_tokens": 2}).status_code == 200


# --- tool calls -----------------------------------------------------------------------------------------


def test_a_forced_tool_call_comes_back_as_tool_calls_and_its_result_is_answered(one_slot):
    client = one_slot.client()
    r = chat(client, WEATHER_ASK, max_tokens=60, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit") and len(args["city"]) <= 20
    answer = chat(client, [*WEATHER_ASK, choice.message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'}], tools=[WEATHER])
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.content


def test_a_required_tool_call_streams_as_one_tool_calls_delta(one_slot):
    stream = one_slot.client().chat.completions.create(model="any", messages=WEATHER_ASK, tools=[WEATHER, TIME], tool_choice="required",
                                                       temperature=0, max_tokens=60, stream=True)
    chunks = [c.choices[0] for c in stream if c.choices]
    calls = [d for c in chunks for d in (c.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(calls[0].function.arguments), dict)
    assert chunks[-1].finish_reason == "tool_calls"
    assert not any(c.delta.content for c in chunks)


def test_tools_are_refused_where_the_template_cannot_show_them(server, one_slot):
    with pytest.raises(openai.BadRequestError) as e:
        chat(server.client(), WEATHER_ASK, tools=[WEATHER])
    assert "does not show it the tools" in e.value.body["message"]
    bad = [
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0]"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}, "messages[0].tool_calls[0]"),
        ({"messages": [{"role": "tool", "content": "18"}]}, "messages[0].tool_call_id"),
    ]
    for extra, param in bad:
        r = one_slot.http().post("/v1/chat/completions", json={"messages": WEATHER_ASK, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# --- safety ---------------------------------------------------------------------------------------------


def test_the_api_key_is_required_except_for_health(server):
    with pytest.raises(openai.AuthenticationError):
        chat(server.client("wrong-key"))
    r = server.http(key=None).get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert server.http("wrong").get("/metrics").status_code == 401
    assert server.http(key=None).get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    "body, param, words",
    [
        (b"{not json", None, "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None, "NaN is not a JSON value"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"prompt": "\xc3\x28"}', None, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
        (b'{"temperature": 0}', "messages", "'messages' must be a non-empty list"),
        (b'{"messages": []}', "messages", "non-empty list"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role", "must be one of"),
        (b'{"messages": [{"role": "user"}]}', "messages[0].content", "missing"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', "messages[0].content[0].image_url", "must be {'url'"),
        (b'{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}', "messages[0].content", "only text and image_url parts"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature", "from 0 to 2"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "temperature", "from 0 to 2"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": 5}', "top_p", "from 0 to 1"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens", "integer from 1"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": true}', "max_tokens", "integer from 1"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "max_completion_tokens": 6}', "max_completion_tokens", "not two"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1.5}', "seed", "integer"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": [1]}', "stop", "list of strings"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ""}', "stop", "1 to 1000 characters"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream", "true or false"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}}', "stream_options", "only with"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "n", "not supported"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}}', "logit_bias", "not supported"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": 5}', "model", "must be a string"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}', "response_format", "'json_schema'"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}}',
         "response_format", "cannot be turned into a grammar"),
    ],
)
def test_bad_requests_get_400_with_a_message(server, body, param, words):
    r = server.http().post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert words in err["message"]
    assert err["param"] == param


def test_bad_completion_prompt_and_embeddings_input_get_400(server):
    http = server.http()
    r = http.post("/v1/completions", json={"prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = http.post("/v1/embeddings", json={"input": [], "model": "any"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no such endpoint: /v1/nothing"


def test_a_body_over_the_limit_gets_413(server):
    from edgellm.serve.api import MAX_BODY

    big = b'{"prompt": "' + b"a" * (MAX_BODY + (1 << 20)) + b'"}'
    r = server.http().post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: counted while read
        for _ in range(MAX_BODY // (1 << 20) + 1):
            yield b"a" * (1 << 20)

    r = server.http().post("/v1/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_cors_only_with_the_option(server, one_slot):
    preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    r = httpx2.options(server.url + "/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.test"
    assert httpx2.options(server.url + "/v1/chat/completions", headers={**preflight, "Origin": "http://evil.test"}).status_code == 400
    assert "access-control-allow-origin" not in httpx2.get(one_slot.url + "/health", headers={"Origin": "http://app.test"}).headers


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0 lets other machines reach the API: give --api-key KEY, or --insecure to serve it without one"),
        (["--host", "example.org", "--api-key", " "], "--api-key is empty"),
        (["/nowhere/model.gguf", "--port", "0"], "no such model file, package folder or store name: /nowhere/model.gguf"),
    ],
)
def test_bad_command_lines_get_one_line(args, message):
    r = subprocess.run([EDGELLM, "serve", *args], capture_output=True, text=True, timeout=WAIT_S, env={**os.environ, "EDGELLM_API_KEY": ""})
    assert r.returncode == 2
    assert r.stderr == f"edgellm: {message}\n"


def test_a_port_in_use_is_one_line(server):
    port = server.url.rsplit(":", 1)[1]
    r = subprocess.run([EDGELLM, "serve", "--port", port], capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 1
    assert r.stderr == f"edgellm: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_ctrl_c_ends_open_streams_and_exits_cleanly(held):
    with held_stream(held) as r:
        lines = r.iter_lines()
        next(lines)
        wait_held(held)
        rc, log = held.interrupt()
        rest = [line for line in lines if line]
    assert rc == 130
    assert log.splitlines()[-1] == "edgellm: interrupted" and "Traceback" not in log
    assert json.loads(rest[-1][6:])["error"]["message"] == "the server is shutting down"
