"""Reranking on `edgellm serve` with a reranker GGUF: a tiny BERT cross-encoder converted by llama.cpp's
converter, scored through plain HTTP on each path llama.cpp's server answers, checked field by field against
Jina's and Cohere's response shape and against transformers' logits for the same token ids; bad requests, and
a reranker refusing to chat or embed (and a chat model refusing to rerank)."""

from __future__ import annotations

import llama_cpp as L
import pytest
from fixtures import smollm2_gguf
from rerank_fixtures import reranker_checkpoint, reranker_gguf, transformers_scores
from serving import KEY, running

from edgellm.engine.embedding import rank_pair

QUERY = "what is the capital of france?"
DOCS = ["paris is the capital of france.", "the cat sat on the mat.", "berlin is the capital city of germany",
        "rain and cold weather", "the dog eats bread"]
TOLERANCE = 5e-3  # llama.cpp's f32 graph against torch's (its GELU and layer norms round differently)


@pytest.fixture(scope="module")
def pairs():
    """Each (QUERY, doc) pair's token ids as the server lays them out, from llama.cpp's own vocabulary."""
    model = L.llama_model_load_from_file(str(reranker_gguf()).encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)

    def tokenize(text: str, special: bool) -> list[int]:
        data = text.encode()
        buf = (L.llama_token * (len(data) + 8))()
        return list(buf[: L.llama_tokenize(vocab, data, len(data), buf, len(buf), False, special)])

    try:
        return [rank_pair(model, tokenize, QUERY, d) for d in DOCS]
    finally:
        L.llama_model_free(model)


@pytest.fixture(scope="module")
def expected(pairs):
    """transformers' logit for each pair: every token of segment 0, as llama.cpp reads them (its batches carry no token types)."""
    return transformers_scores(pairs, [[0] * len(p) for p in pairs])


@pytest.fixture(scope="module")
def server():
    yield from running(str(reranker_gguf()), "--api-key", KEY)


def test_pairs_are_bert_pairs(pairs):
    """[CLS] query [SEP] document [SEP], the ids transformers' tokenizer gives the same pair."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(reranker_checkpoint())
    assert pairs == [tok(QUERY, d)["input_ids"] for d in DOCS]


def test_rerank_shape_and_scores(server, pairs, expected):
    order = sorted(range(len(DOCS)), key=lambda i: -expected[i])
    with server.http() as http:
        r = http.post("/v1/rerank", json={"model": "tiny", "query": QUERY, "documents": [DOCS[0], *({"text": d} for d in DOCS[1:])],
                                          "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "object", "results", "usage"}
    assert body["model"] == "tiny" and body["object"] == "list"
    n = sum(len(p) for p in pairs)
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}
    assert [x["index"] for x in body["results"]] == order
    for x in body["results"]:
        assert set(x) == {"index", "relevance_score", "document"}
        assert x["document"] == {"text": DOCS[x["index"]]}
        assert isinstance(x["relevance_score"], float)
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=TOLERANCE)


@pytest.mark.parametrize("path", ["/rerank", "/v1/reranking"])
def test_other_paths_and_top_n(server, expected, path):
    best = max(range(len(DOCS)), key=lambda i: expected[i])
    with server.http() as http:
        r = http.post(path, json={"query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and results[0]["index"] == best and set(results[0]) == {"index", "relevance_score"}
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    with server.http() as http:
        assert len(http.post(path, json={"query": QUERY, "documents": DOCS, "top_n": 100}).json()["results"]) == len(DOCS)


BAD = [
    ({"documents": DOCS}, "query"),
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": QUERY, "documents": ["ok", 3]}, "documents[1]"),
    ({"query": QUERY, "documents": ["ok", {"txt": "no"}]}, "documents[1]"),
    ({"query": QUERY, "documents": ["x"] * 1025}, "documents"),
    ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
    ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, "return_documents"),
    ({"query": QUERY, "documents": ["short", "the cat sat " * 200]}, "documents[1]"),  # over the 512-token context
]


@pytest.mark.parametrize("body,param", BAD)
def test_bad_requests(server, body, param):
    with server.http() as http:
        r = http.post("/v1/rerank", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"]


def test_the_segment_caveat_is_said_at_start(server):
    """The fixture learned token types (two segments), which llama.cpp does not feed; its pooler is in the GGUF."""
    log = "".join(server.log)
    assert "Note: llama.cpp reads both texts of a pair as the first segment" in log and "no pooler" not in log


def test_key_required(server):
    with server.http(key=None) as http:
        assert http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 401


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/embeddings", {"input": "hi"}),
])
def test_reranker_refuses_to_generate_or_embed(server, path, body):
    with server.http() as http:
        r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert "is a reranker" in r.json()["error"]["message"]
    assert "Traceback" not in "".join(server.log)  # refused before anything reaches llama.cpp


def test_chat_model_refuses_to_rerank():
    for s in running(str(smollm2_gguf()), "--parallel", "1", "--ctx", "256"):
        with s.http() as http:
            r = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "unsupported_model" and "is not a reranker" in r.json()["error"]["message"]


def test_store_serves_a_reranker_beside_a_chat_model(tmp_path, expected):
    """Served from the store, the reranker loads on a rerank request naming it (with one slot, though the server
    runs four), and the chat model beside it still chats."""
    import os
    import subprocess

    from serving import EDGELLM, WAIT_S, Server

    env = {**os.environ, "EDGELLM_HOME": str(tmp_path / "edgellm")}
    for path, name in ((reranker_gguf(), "rr"), (smollm2_gguf(), "smol")):
        subprocess.run([EDGELLM, "import", str(path), "--name", name], env=env, check=True, capture_output=True, timeout=WAIT_S)
    with Server("--ctx", "256", store=True, env=env) as s, s.http() as http:
        r = http.post("/v1/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "rr" and r.json()["results"][0]["index"] == max(range(len(DOCS)), key=lambda i: expected[i])
        assert "loaded rr F32 in" in "".join(s.log) and "· 1 slots × 256 tokens" in "".join(s.log)
        r = http.post("/v1/chat/completions", json={"model": "rr", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "is a reranker" in r.json()["error"]["message"]
        r = http.post("/v1/rerank", json={"model": "smol", "query": QUERY, "documents": DOCS})
        assert r.status_code == 400 and "is not a reranker" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json={"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text


RERANK_TEMPLATE = "[CLS] query: {query} [SEP] document: {document} [SEP]"


def test_a_rerank_template_lays_out_the_pair(tmp_path):
    """A GGUF with `tokenizer.chat_template.rerank` (and rank pooling said outright) has each pair written by it,
    its special tokens parsed, and scored as transformers scores the same ids."""
    from gguf import GGUFValueType
    from gguf_edit import copy_gguf, typed
    from transformers import AutoTokenizer

    gguf = copy_gguf(reranker_gguf(), tmp_path / "templated.gguf", {"tokenizer.chat_template.rerank": typed(RERANK_TEMPLATE, GGUFValueType.STRING),
                                                                      "bert.pooling_type": typed(4, GGUFValueType.UINT32)})
    tok = AutoTokenizer.from_pretrained(reranker_checkpoint())
    ids = [tok(RERANK_TEMPLATE.format(query=QUERY, document=d), add_special_tokens=False)["input_ids"] for d in DOCS]
    assert all(i[0] == tok.cls_token_id and i.count(tok.sep_token_id) == 2 for i in ids)
    want = transformers_scores(ids, [[0] * len(i) for i in ids])
    for s in running(str(gguf)):
        with s.http() as http:
            r = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert [x["index"] for x in r.json()["results"]] == sorted(range(len(DOCS)), key=lambda i: -want[i])
        assert [got[i] for i in range(len(DOCS))] == pytest.approx(want, abs=TOLERANCE)


def test_ollama_chat_with_a_reranker_is_refused(server):
    with server.http() as http:
        r = http.post("/api/chat", json={"model": "reranker-bert-tiny-v2-for-llamacpp", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "is a reranker" in r.json()["error"]
