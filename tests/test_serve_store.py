"""`edgellm serve` without a model serves the store: two models in a fresh store (the SmolLM2 demo GGUF and
SmolLM2 with a tool-calling template), each loaded when a request names it, through the real `ollama`,
`openai` and `anthropic` clients; /api/ps shows what is loaded and until when, keep_alive 0 unloads, and a
tight --ram makes the least recently used one give way."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import datetime

import anthropic
import ollama
import openai
import pytest
from fixtures import smollm2_gguf
from serving import EDGELLM, WAIT_S, Server, make_tools_gguf, running

from edgellm.plan.planner import RAM_MARGIN

ASK = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
SMALL = ("--parallel", "1", "--ctx", "256")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh EDGELLM_HOME whose store holds smol-a (the demo GGUF) and smol-b (another template), linked."""
    folder = tmp_path_factory.mktemp("store")
    env = {**os.environ, "EDGELLM_HOME": str(folder / "edgellm")}
    for name, path in (("smol-a", smollm2_gguf()), ("smol-b", make_tools_gguf(folder))):
        subprocess.run([EDGELLM, "import", str(path), "--name", name], env=env, check=True, capture_output=True, timeout=WAIT_S)
    return env


@pytest.fixture(scope="module")
def server(home):
    yield from running(*SMALL, "--keep-alive", "1h", store=True, env=home)


def ps(server: Server) -> dict[str, dict]:
    return {m["name"]: m for m in server.http().get("/api/ps").json()["models"]}


def loads(server: Server, name: str) -> int:
    return sum(line.startswith(f"loaded {name} ") for line in server.log)


def wait_for(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_each_model_loads_when_named_and_both_stay_loaded(server):
    assert ps(server) == {} and "serving the store (2 models: smol-a, smol-b)" in "".join(server.log)
    models = {m.id: m.meta["loaded"] for m in server.client().models.list().data}
    assert models == {"smol-a": False, "smol-b": False}
    o = ollama.Client(host=server.url, timeout=WAIT_S)
    assert sorted(m.model for m in o.list().models) == ["smol-a:latest", "smol-b:latest"]
    assert "tools" in o.show("smol-b").capabilities and "tools" not in o.show("smol-a:latest").capabilities  # read from the files
    a = o.chat(model="smol-a", messages=ASK, options={"temperature": 0, "num_predict": 20})
    b = server.client().chat.completions.create(model="smol-b", messages=ASK, temperature=0, max_tokens=20)
    assert a.model == "smol-a" and a.message.content and b.model == "smol-b" and b.choices[0].message.content
    loaded = ps(server)
    assert set(loaded) == {"smol-a:latest", "smol-b:latest"} and all(m["size"] > 0 and m["context_length"] == 256 for m in loaded.values())
    until = datetime.fromisoformat(loaded["smol-a:latest"]["expires_at"].replace("Z", "+00:00")).timestamp()
    assert 3500 < until - time.time() <= 3600  # --keep-alive 1h, counted from the reply's end
    c = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0, timeout=WAIT_S)
    assert c.messages.create(model="smol-a", max_tokens=10, messages=ASK, extra_body={"temperature": 0}).content[0].text
    assert server.client().responses.create(model="SMOL-B:latest", input="Hi", max_output_tokens=3).status == "incomplete"
    assert len(o.embed(model="smol-b:Q4_1", input=["a", "b"]).embeddings) == 2  # the level smol-b was loaded with: no second copy
    assert "smol-b:latest" in ps(server) and loads(server, "smol-b") == 1, "".join(server.log)
    assert loads(server, "smol-a") == 1  # loaded once, then reused
    assert server.health()["slots_idle"] == 2


def test_an_unknown_model_or_level_is_a_404_naming_the_store(server):
    with pytest.raises(openai.NotFoundError) as err:
        server.client().chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=2)
    assert "the store has smol-a, smol-b" in err.value.body["message"]
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=server.url, timeout=WAIT_S).chat(model="smol-a:Q8_0", messages=ASK)
    assert err.value.status_code == 404 and "smol-a:Q4_1" in err.value.error


def test_requests_wait_for_a_loading_model_and_models_answer_side_by_side(server):
    """While smol-a streams a long reply, smol-b answers; two requests for a cold model both wait for one load."""
    o = ollama.Client(host=server.url, timeout=WAIT_S)
    o.generate(model="smol-b", keep_alive=0)  # unloaded: cold again
    wait_for(lambda: "smol-b:latest" not in ps(server), "smol-b stayed loaded after keep_alive 0")
    long = server.client().chat.completions.create(model="smol-a", messages=ASK, max_tokens=200, extra_body={"ignore_eos": True}, stream=True)
    next(iter(long))
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(o.generate(model="smol-b", prompt="Hi", options={"num_predict": 3})))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert [r.done_reason for r in replies] == ["length", "length"]
    assert server.health()["slots_processing"] == 1  # smol-a's long reply is still being generated beside them
    assert sum(len(chunk.choices) for chunk in long) > 100
    assert loads(server, "smol-b") == 2  # once at first, once after the unload


def test_keep_alive_zero_unloads_after_the_reply(server):
    o = ollama.Client(host=server.url, timeout=WAIT_S)
    r = o.chat(model="smol-a", messages=ASK, options={"num_predict": 3}, keep_alive=0)
    assert r.done_reason == "length"
    wait_for(lambda: "smol-a:latest" not in ps(server), "smol-a stayed loaded after keep_alive 0")
    assert o.generate(model="smol-a", keep_alive=0).done_reason == "unload"
    assert "unloaded smol-a (idle)" in "".join(server.log)


def test_a_tight_ram_budget_unloads_the_least_recently_used_model(home, server):
    server.client().chat.completions.create(model="smol-a", messages=ASK, max_tokens=2)
    size = ps(server)["smol-a:latest"]["size"]  # what the planner counts for one model (both are the same size)
    fixed, share = RAM_MARGIN
    ram = int((size + fixed) / (1 - share) + size / 2)  # room for one model beside the planner's margin, not two
    with Server(*SMALL, "--ram", str(ram), store=True, env=home) as s:
        c = s.client()
        for name in ("smol-a", "smol-b"):
            c.chat.completions.create(model=name, messages=ASK, max_tokens=2)
        assert set(ps(s)) == {"smol-b:latest"} and "unloaded smol-a (to make room)" in "".join(s.log)
        c.chat.completions.create(model="smol-a", messages=ASK, max_tokens=2)
        assert set(ps(s)) == {"smol-a:latest"}


def test_serving_an_empty_store_or_a_model_option_is_one_line(tmp_path):
    env = {**os.environ, "EDGELLM_HOME": str(tmp_path / "empty")}
    r = subprocess.run([EDGELLM, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 2 and r.stderr.startswith("edgellm: the store holds no models: give MODEL") and r.stderr.count("\n") == 1
    r = subprocess.run([EDGELLM, "serve", "--port", "0", "--alias", "x"], env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 2 and "--alias applies to one model" in r.stderr
    r = subprocess.run([EDGELLM, "serve", "--port", "0", "--keep-alive", "soon"], env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 2 and "'soon' is not a duration" in r.stderr


def test_a_damaged_model_is_one_error_and_the_others_still_load(tmp_path):
    env = {**os.environ, "EDGELLM_HOME": str(tmp_path / "edgellm")}
    subprocess.run([EDGELLM, "import", str(smollm2_gguf()), "--name", "smol-a"], env=env, check=True, capture_output=True, timeout=WAIT_S)
    broken = tmp_path / "edgellm" / "models" / "broken"
    broken.mkdir(parents=True)
    data = smollm2_gguf().read_bytes()
    (broken / "broken-Q4_1.gguf").write_bytes(data[: len(data) // 2])  # cut short: the header promises more tensor data
    with Server(*SMALL, store=True, env=env) as s:
        c = s.client()
        with pytest.raises(openai.InternalServerError) as err:
            c.chat.completions.create(model="broken", messages=ASK, max_tokens=2)
        assert err.value.body["message"].startswith("cannot load broken: ") and err.value.body["code"] == "model_load_failed"
        r = s.http().post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = s.http().post("/v1/chat/completions", json={"messages": ASK})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("'model' is required: one of broken, smol-a")
        assert c.chat.completions.create(model="smol-a", messages=ASK, max_tokens=2).choices[0].message.content
        assert set(ps(s)) == {"smol-a:latest"}
