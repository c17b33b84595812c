"""SentencePiece vocabularies from tokenizer.json alone (no tokenizer.model), as transformers 5 saves them:
the same vocabulary llama.cpp's converter writes from tokenizer.model, token ids as transformers gives them,
and a clear refusal where llama.cpp could not tokenize as transformers does (Unigram)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import arch_fixtures
import fixtures
from conftest import llama
from edgellm.errors import EdgeError
from edgellm.quantize.convert import convert_checkpoint
from edgellm.quantize.vocab import CONTROL, USER_DEFINED, load_vocab
from test_convert import EXPECTED_DIFFERENT, MESSAGES, TEXT, _fields
from test_convert_errors import assert_failed, run_cli

# checkpoint -> (its builder, outtype and `architectures` of llama.cpp's reference conversion)
SOURCES = {
    "gemma3": (arch_fixtures.gemma3_checkpoint, "bf16", "Gemma3ForCausalLM"),
    "phi3": (arch_fixtures.phi3_checkpoint, "f16", None),
    "mistral": (fixtures.mistral_checkpoint, "f16", None),
}


def _json_only(name: str) -> Path:
    return arch_fixtures.tokenizer_json_only(name, SOURCES[name][0]())


def _reference(name: str) -> Path:
    """llama.cpp's converter on the checkpoint as shipped, tokenizer.model included."""
    build, outtype, arch = SOURCES[name]
    src = build()
    if arch:
        src = arch_fixtures.with_architectures(name, src, arch)
    return arch_fixtures.llamacpp_reference_gguf(name, src, outtype)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("json-only")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            done[name] = convert_checkpoint(_json_only(name), folder / f"{name}.gguf", SOURCES[name][1], progress=False)
        return done[name]

    return get


# The Mistral fixture's tokenizer_config has no added_tokens_decoder table, so from tokenizer.model llama.cpp
# types <unk> <s> </s> as SentencePiece does; the transformers 5 copy lists them as special added tokens
# (CONTROL, as llama.cpp types them beside the table every transformers 4 save has). Its ids are compared.
SAME_AS_REFERENCE = ["gemma3", "phi3"]


@pytest.mark.parametrize("name", SAME_AS_REFERENCE)
def test_same_vocabulary_as_llamacpp_converter_with_tokenizer_model(name, converted):
    """Tokens, scores, token types, special ids and flags byte for byte as llama.cpp writes them from
    tokenizer.model (which this copy does not have)."""
    assert not (_json_only(name) / "tokenizer.model").exists()
    ref, _ = _fields(_reference(name))
    ours, _ = _fields(converted(name))
    keys = {k for k in set(ref) | set(ours) if k.startswith("tokenizer.ggml.")} - EXPECTED_DIFFERENT
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id"} <= keys
    for key in sorted(keys):
        if key == "tokenizer.ggml.add_bos_token" and key not in ref:
            continue  # edgellm always writes it; llama.cpp leaves it to its default (the ids test checks it)
        if key == "tokenizer.ggml.add_sep_token" and key not in ref:
            continue  # read by gguf-py from tokenizer.json's pair template, which the original folder lacks
        assert key in ours and key in ref, key
        assert ours[key] == ref[key], key


@pytest.mark.parametrize("name", list(SOURCES))
def test_token_ids_match_transformers(name, converted):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_json_only(name))
    llm = llama(converted(name), vocab_only=True)
    expected = tok(TEXT)["input_ids"]
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=False) == expected  # BOS as the GGUF says
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == tok(prompt, add_special_tokens=False)["input_ids"]
    # byte fallback: characters the tiny vocabulary lacks come out as <0xNN> pieces on both sides
    rare = "ꙮ𝔘 日本語"
    assert llm.tokenize(rare.encode(), add_bos=False, special=False) == tok(rare, add_special_tokens=False)["input_ids"]


def _spm_folder(tmp_path: Path, **changes) -> Path:
    """The Gemma tokenizer, tokenizer.json only, with tokenizer.json's top-level fields changed."""
    folder = tmp_path / "tok"
    shutil.copytree(_json_only("gemma3"), folder)
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    tok_json.update(changes)
    (folder / "tokenizer.json").write_text(json.dumps(tok_json))
    return folder


def test_other_normalizers_are_refused(tmp_path):
    folder = _spm_folder(tmp_path, normalizer={"type": "NFKC"})
    with pytest.raises(EdgeError, match=r"normalizer and pre-tokenizer \(NFKC; split ' ' MergedWithPrevious False\) do more than turn spaces"):
        load_vocab(folder, 1024)


def test_bpe_without_byte_fallback_is_refused(tmp_path):
    tok_json = json.loads((_json_only("gemma3") / "tokenizer.json").read_text())
    folder = _spm_folder(tmp_path, model={**tok_json["model"], "byte_fallback": False})
    with pytest.raises(EdgeError, match="BPE model without byte fallback"):
        load_vocab(folder, 1024)


def test_unigram_is_refused_as_by_llamacpp(tmp_path, capsys, monkeypatch):
    """A Unigram tokenizer.json: llama.cpp's converter refuses it too, and llama.cpp's SentencePiece tokenizer
    merges by score where Unigram finds the most likely split."""
    from tokenizers import SentencePieceUnigramTokenizer

    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "unigram"
    shutil.copytree(fixtures.mistral_checkpoint(), folder)
    (folder / "tokenizer.model").unlink()
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(fixtures.training_text().splitlines(), vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>")
    tok.save(str(folder / "tokenizer.json"))
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([folder, "-o", out], capsys), r"holds a Unigram model and there is no tokenizer\.model; llama\.cpp's SentencePiece", out)

    script = fixtures.llamacpp_converter()
    ref = subprocess.run(
        [sys.executable, str(script), str(folder), "--vocab-only", "--outfile", str(tmp_path / "ref.gguf")],
        env={**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")},
        capture_output=True,
        text=True,
    )
    assert ref.returncode != 0 and "pre-tokenizer was not recognized" in ref.stderr
    assert not (tmp_path / "ref.gguf").exists()


def test_pieces_scored_by_merge_order_not_id(tmp_path, capsys, monkeypatch):
    """A BPE whose ids are not in the order its merges were learned (as a tokenizer trained with other tools
    may number them): the scores follow the merges, so llama.cpp still splits as transformers does."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "ckpt"
    shutil.copytree(_json_only("gemma3"), folder)
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok_json["model"]["vocab"]
    added = {a["id"] for a in tok_json["added_tokens"]}
    normal = sorted((i, t) for t, i in vocab.items() if i not in added and not t.startswith("<0x"))
    ids = [i for i, _ in normal]
    vocab.update({t: i for (_, t), i in zip(normal, reversed(ids))})
    (folder / "tokenizer.json").write_text(json.dumps(tok_json))

    out = convert_checkpoint(folder, tmp_path / "out.gguf", "bf16", progress=False)
    tok = AutoTokenizer.from_pretrained(folder)
    llm = llama(out, vocab_only=True)
    expected = tok(TEXT)["input_ids"]
    assert expected != AutoTokenizer.from_pretrained(_json_only("gemma3"))(TEXT)["input_ids"]  # the ids did move
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=False) == expected


def test_added_tokens_typed_as_llamacpp_types_them(tmp_path):
    """Special by tokenizer.json's flag or by tokenizer_config's names (a list, or a table in transformers 5):
    control; other added tokens: user-defined, with "▁" written as the space llama.cpp matches them against."""
    tok_json = json.loads((_json_only("gemma3") / "tokenizer.json").read_text())
    for a in tok_json["added_tokens"]:
        a["special"] = a["special"] and a["content"] not in ("<start_of_turn>", "<end_of_turn>")
    extra = {"id": 1000, "content": "\u2581hi\u2581there", "special": False, "normalized": False, "lstrip": False, "rstrip": False, "single_word": False}
    folder = _spm_folder(tmp_path, added_tokens=[*tok_json["added_tokens"], extra])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = {"turn_start": "<start_of_turn>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    vocab = load_vocab(folder, 1024)
    assert (vocab.tokens[5], vocab.types[5], vocab.scores[5]) == (b"<start_of_turn>", CONTROL, -1000.0)  # named in the table
    assert (vocab.tokens[6], vocab.types[6]) == (b"<end_of_turn>", USER_DEFINED)  # named nowhere any more
    assert (vocab.tokens[1000], vocab.types[1000], vocab.scores[1000]) == (b" hi there", USER_DEFINED, -1000.0)
    assert vocab.tokens[1001] == b"[PAD1001]"


@pytest.mark.parametrize(
    "field,value,pattern",
    [
        ("model", "merges", r"malformed tokenizer\.json in .*: AttributeError"),
        ("added_tokens", [{"id": -1, "content": "<x>"}], r"token id that is not a whole number from 0"),
        ("added_tokens", [{"id": 5}], r"malformed tokenizer\.json in .*: KeyError 'content'"),
    ],
)
def test_damaged_tokenizer_json_is_one_readable_error(field, value, pattern, tmp_path):
    with pytest.raises(EdgeError, match=pattern):
        load_vocab(_spm_folder(tmp_path, **{field: value}), 1024)


def test_damaged_merge_is_one_readable_error(tmp_path):
    tok_json = json.loads((_json_only("gemma3") / "tokenizer.json").read_text())
    folder = _spm_folder(tmp_path, model={**tok_json["model"], "merges": [["a", "b", "c"]]})
    with pytest.raises(EdgeError, match=r"malformed tokenizer\.json in .*: ValueError too many values to unpack"):
        load_vocab(folder, 1024)
