"""Embeddings on `edgellm serve`: the real `ollama` client's `embed` and the real `openai` client's
`embeddings.create` against SmolLM2, checked against llama-cpp-python's own embedding path (`Llama.embed`, mean
pooling: the GGUF names none) on the same file, and bad requests."""

from __future__ import annotations

import math

import llama_cpp
import ollama
import pytest
from fixtures import smollm2_gguf
from serving import WAIT_S, running

SLOT_CTX = 256
TEXTS = ["The capital of France is Paris.", "Bonjour tout le monde"]


@pytest.fixture(scope="module")
def server():
    yield from running(str(smollm2_gguf()), "--parallel", "1", "--ctx", str(SLOT_CTX))


@pytest.fixture(scope="module")
def expected():
    """The same texts through llama-cpp-python's high-level embedding path: mean-pooled, unscaled, with flash
    attention as llama.cpp's default picks on this CPU (without it the vectors differ in the third decimal)."""
    llm = llama_cpp.Llama(str(smollm2_gguf()), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_ctx=SLOT_CTX,
                          flash_attn=True, verbose=False)
    try:
        return [llm.embed(t) for t in TEXTS], llm.tokenize(TEXTS[0].encode())
    finally:
        llm.close()


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_ollama_embed_gives_unit_vectors_pooled_as_llama_cpp_does(server, expected):
    vectors, tokens = expected
    o = ollama.Client(host=server.url, timeout=WAIT_S)
    name = o.list().models[0].model
    r = o.embed(model=name, input=TEXTS)
    assert r.model == name and len(r.embeddings) == 2 and r.prompt_eval_count > 0
    assert all(close(got, unit(want)) for got, want in zip(r.embeddings, vectors))
    assert close(o.embed(model=name, input=TEXTS[0]).embeddings[0], r.embeddings[0])
    assert close(o.embeddings(model=name, prompt=TEXTS[0]).embedding, vectors[0])  # the older route: not scaled
    long = " ".join(["word"] * (SLOT_CTX * 2))
    assert len(o.embed(model=name, input=long).embeddings[0]) == len(vectors[0])  # cut to the context
    with pytest.raises(ollama.ResponseError) as err:
        o.embed(model=name, input=long, truncate=False)
    assert err.value.status_code == 400 and "tokens" in err.value.error


def test_openai_embeddings_float_and_base64(server, expected):
    vectors, tokens = expected
    c = server.client()
    r = c.embeddings.create(model="any", input=TEXTS)  # the client asks for base64 and decodes it
    assert [d.index for d in r.data] == [0, 1] and all(close(d.embedding, unit(v)) for d, v in zip(r.data, vectors))
    floats = c.embeddings.create(model="any", input=TEXTS[0], encoding_format="float")
    assert close(floats.data[0].embedding, r.data[0].embedding) and floats.usage.prompt_tokens == len(tokens)


@pytest.mark.parametrize("path, body, words", [
    ("/v1/embeddings", {"model": "any", "input": ""}, "empty string"),
    ("/v1/embeddings", {"model": "any", "input": [1, 2]}, "list of strings"),
    ("/v1/embeddings", {"model": "any", "input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ("/v1/embeddings", {"model": "any", "input": "hi", "dimensions": 7}, "dimensions"),
    ("/api/embed", {"model": "nope", "input": "hi"}, "not found"),
    ("/api/embed", {"model": None, "input": {"a": 1}}, "required"),
    ("/api/embeddings", {"model": "SERVED", "prompt": 3}, "prompt"),
])
def test_bad_embedding_requests_are_answered_in_their_apis_shape(server, path, body, words):
    if body["model"] == "SERVED":
        body = {**body, "model": server.http().get("/api/tags").json()["models"][0]["name"]}
    r = server.http().post(path, json=body)
    error = r.json()["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert 400 <= r.status_code < 500 and words in message, (r.status_code, error)
    assert server.health()["status"] == "ok"
