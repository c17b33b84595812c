"""Ollama's API on `edgellm serve`: the real `ollama` client (Client and AsyncClient) against the real SmolLM2,
compared with what the OpenAI endpoint gives for the same messages, plus the NDJSON wire format read line by
line through httpx2."""

from __future__ import annotations

import asyncio
import json

import ollama
import pytest

from edgellm.serve.api import MAX_BODY
from serving import KEY, WAIT_S, Server

SLOT_CTX = 512
CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
GREEDY = {"temperature": 0, "num_predict": 30}


@pytest.fixture(scope="module")
def server():
    s = Server("--parallel", "2", "--ctx", str(SLOT_CTX), "--api-key", KEY, "--alias", "local")
    yield s
    rc, log = s.interrupt()
    assert rc == 130 and "Traceback" not in log, log


def client(server: Server, key: str | None = KEY) -> ollama.Client:
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=WAIT_S)


def openai_reply(server: Server, messages=CAPITAL, max_tokens: int = 30):
    return server.client().chat.completions.create(model="any", messages=messages, temperature=0, max_tokens=max_tokens)


def test_chat_gives_the_openai_reply_with_ollamas_counts(server):
    expected = openai_reply(server)
    r = client(server).chat(model="local", messages=CAPITAL, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content == expected.choices[0].message.content == "The capital of France is Paris."
    assert r.done and r.done_reason == "stop" and r.model == "local"
    assert r.prompt_eval_count == expected.usage.prompt_tokens and r.eval_count == expected.usage.completion_tokens
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0 and r.eval_duration > 0 and r.load_duration == 0
    assert r.created_at.endswith("Z")


def test_chat_streams_by_default_and_async_client_gets_the_same(server):
    expected = client(server).chat(model="local", messages=CAPITAL, options=GREEDY).message.content
    parts = list(client(server).chat(model="local", messages=CAPITAL, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == expected
    assert not any(p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "stop"
    assert parts[-1].message.content == "" and parts[-1].eval_count >= len(parts) - 1  # each part holds a token or more

    async def both():
        c = ollama.AsyncClient(host=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=WAIT_S)
        whole = await c.chat(model="local", messages=CAPITAL, options=GREEDY)
        streamed = [p.message.content async for p in await c.chat(model="local", messages=CAPITAL, options=GREEDY, stream=True)]
        return whole.message.content, "".join(streamed)

    assert asyncio.run(both()) == (expected, expected)


def test_generate_renders_the_chat_template_unless_raw(server):
    c = client(server)
    r = c.generate(model="local", prompt=CAPITAL[0]["content"], options=GREEDY)
    assert r.response == openai_reply(server).choices[0].message.content and r.done_reason == "stop"
    raw = c.generate(model="local", prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 12})
    plain = server.client().completions.create(model="any", prompt="The capital of France is", max_tokens=12, temperature=0)
    assert raw.response == plain.choices[0].text and raw.done_reason == "length" and raw.eval_count == 12
    word = raw.response.split()[1]
    cut = c.generate(model="local", prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 12, "stop": [word]})
    assert cut.response == raw.response[: raw.response.index(word)] and cut.done_reason == "stop"
    streamed = c.generate(model="local", prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 12}, stream=True)
    assert "".join(p.response for p in streamed) == raw.response
    loaded = c.generate(model="local")  # Ollama's way of loading a model
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_sampling_options_map_onto_the_sampler(server):
    c = client(server)
    ask = [{"role": "user", "content": "Write a sentence about the sea."}]
    a, b = (c.chat(model="local", messages=ask, options={"temperature": 0.9, "seed": 11, "num_predict": 16, "top_k": 50, "top_p": 0.9})
            .message.content for _ in range(2))
    assert a == b
    expected = server.client().chat.completions.create(model="any", messages=ask, temperature=0.9, seed=11, max_tokens=16, top_p=0.9,
                                                       extra_body={"top_k": 50}).choices[0].message.content
    assert a == expected
    animals = [{"role": "user", "content": "List twenty animals, one per line."}]
    plain = c.chat(model="local", messages=animals, options={"temperature": 0, "num_predict": 32, "repeat_penalty": 1.0}).message.content
    penalized = c.chat(model="local", messages=animals, options={"temperature": 0, "num_predict": 32, "repeat_penalty": 1.0,
                                                                 "frequency_penalty": 2.0}).message.content
    assert plain != penalized
    loads = {"num_ctx": 4096, "num_gpu": 99, "num_thread": 4, "use_mmap": True, "keep_alive": None}
    kept = c.chat(model="local", messages=CAPITAL, options={**GREEDY, **{k: v for k, v in loads.items() if k != "keep_alive"}},
                  keep_alive="10m")
    assert kept.message.content == "The capital of France is Paris."


def test_format_json_schema_follows_the_schema(server):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    ask = [{"role": "user", "content": "Give the capital of France and its population as JSON."}]
    r = client(server).chat(model="local", messages=ask, format=schema, options={"temperature": 0, "num_predict": 60})
    reply = json.loads(r.message.content)
    assert set(reply) == {"city", "population"} and isinstance(reply["population"], int)
    anything = client(server).chat(model="local", messages=[{"role": "user", "content": "Describe a cat."}], format="json",
                                   options={"temperature": 0, "num_predict": 60})
    assert anything.message.content.lstrip().startswith("{")


def test_names_resolve_as_ollama_clients_send_them(server):
    c = client(server)
    (listed,) = c.list().models
    assert listed.model == "local:latest" and listed.details.format == "gguf" and listed.details.family == "llama"
    assert listed.details.quantization_level == "Q4_1" and listed.details.parameter_size == "135M" and listed.size > 0
    own = "smollm2-135m-8k-lc100k-mix1-ep2"
    for name in ("local", "local:latest", "LOCAL:q4_1", f"{own}:latest", f"{own}:Q4_1"):
        assert c.chat(model=name, messages=CAPITAL, options={"num_predict": 1}).model == name
    for name in ("llama3", "local:Q8_0", "local2"):
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model=name, messages=CAPITAL, options={"num_predict": 1})
        assert e.value.status_code == 404 and e.value.error.startswith(f"model '{name}' not found: this server has ")
        assert "local:latest" in e.value.error


def test_show_ps_and_version(server):
    c = client(server)
    shown = c.show("local")
    assert shown.details.family == "llama" and shown.capabilities == ["completion"]
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["general.parameter_count"] > 100e6
    assert shown.modelinfo["llama.context_length"] == 8192 and not any(k.startswith("tokenizer.") for k in shown.modelinfo)
    assert "<|im_start|>" in shown.template
    (loaded,) = c.ps().models
    assert loaded.model == "local:latest" and loaded.context_length == SLOT_CTX and loaded.size >= loaded.size_vram
    assert loaded.expires_at.year > 2100  # loaded while the server runs
    http = server.http()
    assert http.get("/api/version").json()["version"].count(".") == 2
    assert http.get("/").text == "Ollama is running"


def test_ndjson_transcript_field_by_field(server):
    body = {"model": "local", "messages": CAPITAL, "options": {"temperature": 0, "num_predict": 4}}
    with server.http().stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    *parts, last = lines
    for p in parts:
        assert set(p) == {"model", "created_at", "message", "done"} and p["done"] is False
        assert p["model"] == "local" and set(p["message"]) == {"role", "content"} and p["message"]["role"] == "assistant"
    assert set(last) == {"model", "created_at", "message", "done", "done_reason", "total_duration", "load_duration", "prompt_eval_count",
                         "prompt_eval_duration", "eval_count", "eval_duration"}
    assert last["done"] is True and last["done_reason"] == "length" and last["eval_count"] == 4
    assert all(isinstance(last[k], int) for k in ("total_duration", "prompt_eval_duration", "eval_duration"))
    whole = server.http().post("/api/generate", json={"model": "local", "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    assert whole.headers["content-type"] == "application/json" and whole.json()["done"] is True and "response" in whole.json()


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/api/chat", {"messages": CAPITAL}, "'model' is required"),
        ("/api/chat", {"model": "local", "messages": "hi"}, "'messages' must be a list"),
        ("/api/chat", {"model": "local", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role must be one of"),
        ("/api/chat", {"model": "local", "messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string"),
        ("/api/chat", {"model": "local", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "takes no images: it has no projector"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": {"temperature": "hot"}}, "'options.temperature' must be a number"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": {"top_k": -1}}, "'options.top_k' must be an integer"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": {"num_predict": 0}}, "'options.num_predict' must be -1"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": {"num_ctx": "big"}}, "'options.num_ctx' must be an integer"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": {"mirostat": 2}}, "'options.mirostat' is not supported"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": {"temprature": 0}}, "unknown option 'options.temprature'"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": {"stop": [1]}}, "'options.stop' must be a string or a list"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "options": [1]}, "'options' must be an object"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "format": "yaml"}, "'format' must be \"json\" or a JSON schema"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "stream": "yes"}, "'stream' must be true or false"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "keep_alive": "forever"}, "'keep_alive' must be"),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "think": True}, '"local" does not support thinking'),
        ("/api/chat", {"model": "local", "messages": CAPITAL, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0] must be"),
        ("/api/generate", {"model": "local", "prompt": 5}, "'prompt' must be a string"),
        ("/api/generate", {"model": "local", "prompt": "hi", "suffix": "end"}, "'suffix' is not supported"),
        ("/api/generate", {"model": "local", "prompt": "hi", "context": [1, 2]}, "'context' is not supported"),
        ("/api/show", {"model": "local", "verbose": "yes"}, "'verbose' must be true or false"),
    ],
)
def test_bad_requests_get_400_in_ollamas_shape(server, path, body, words):
    r = server.http().post(path, json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.text


def test_limits_and_the_key_answer_in_ollamas_shape(server):
    with pytest.raises(ollama.ResponseError) as e:
        client(server).chat(model="local", messages=[{"role": "user", "content": "word " * 600}])
    assert e.value.status_code == 400 and f"a slot's context holds {SLOT_CTX}" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client(server, key="wrong").list()
    assert e.value.status_code == 401 and "API key" in e.value.error
    r = server.http().post("/api/pull", json={"model": "llama3"})
    assert r.status_code == 404 and r.json() == {"error": "no such endpoint: /api/pull"}
    r = server.http().post("/api/chat", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    big = b'{"model": "local", "prompt": "' + b"a" * (MAX_BODY + (1 << 20)) + b'"}'
    r = server.http().post("/api/generate", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    r = server.http().post("/api/embed", json={"model": "local", "input": ["hi", 3]})
    assert r.status_code == 400 and "list of strings" in r.json()["error"]
