"""Tokenizers -> GGUF vocabulary: byte-level BPE from tokenizer.json, SentencePiece from tokenizer.model, or
from tokenizer.json alone when it holds SentencePiece's BPE with byte fallback (as transformers 5 saves it).

The BPE pre-tokenizer is recognised from the tokenizer's own structure (its split regexes and byte-level
settings), not from a hash of its output, so an extended or retrained vocabulary with a known structure
still converts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from edgellm.errors import EdgeError

from .checkpoint import read_json

# Split regexes as they appear in tokenizer.json.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-4o's o200k split (GPT-OSS's o200k_harmony too): cased words with their contractions, digits in threes.
O200K_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ByteLevel with use_regex=True splits with GPT-2's own pattern first.
GPT2_REGEX = ("byte_level", "use_regex=True", "add_prefix_space=False")

# pre-tokenizer structure (a tuple of steps) -> llama.cpp's pre-tokenizer name (tokenizer.ggml.pre)
PRE_TOKENIZERS: dict[tuple[tuple[str, ...], ...], str] = {
    (("split", LLAMA3_SPLIT),): "llama-bpe",
    (("split", QWEN2_SPLIT),): "qwen2",
    (("split", O200K_SPLIT),): "gpt-4o",
    (("digits",), GPT2_REGEX): "smollm",
    (GPT2_REGEX,): "gpt-2",
}

# tokenizer.json normalizers a byte-level BPE may have: llama.cpp applies none, and NFC (Qwen2) changes
# nothing for text that is already NFC, as typed text almost always is.
BPE_NORMALIZERS = (None, "NFC")

# SentencePiece-style tokenizer.json: (normalizer steps, pre-tokenizer steps) -> whether text gets a leading
# "▁" (llama.cpp's add_space_prefix). Every structure only turns spaces into "▁" and splits nothing, as
# llama.cpp's SentencePiece tokenizer does; Gemma's Split on " " finds no space left after its normalizer.
# Metaspace adds no "▁" to text that already starts with a space, where SentencePiece and llama.cpp add one:
# such text splits differently from transformers whether the vocabulary came from here or tokenizer.model.
SPM_STRUCTURES: dict[tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]], bool] = {
    ((("replace", " ", "\u2581"),), ()): False,  # Gemma, as transformers 4 saves it
    ((("replace", " ", "\u2581"),), (("split", " ", "MergedWithPrevious", "False"),)): False,  # Gemma, transformers 5
    ((("prepend", "\u2581"), ("replace", " ", "\u2581")), ()): True,  # Llama 2, Mistral (legacy tokenizer.json)
    ((), (("metaspace", "\u2581", "first", "False"),)): True,  # Llama 2, Mistral, Phi-3 (Metaspace)
    ((), (("metaspace", "\u2581", "always", "False"),)): True,
    # transformers 5's Llama 2 / Mistral (legacy=False): a leading "▁" doubled, so that Metaspace always prefixes one
    ((("replace", " ", "\u2581"), ("replace", "\\A\u2581", "\u2581\u2581")), (("metaspace", "\u2581", "always", "False"),)): True,
    ((), (("metaspace", "\u2581", "never", "False"),)): False,
}
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# tokenizer_config.json fields naming special tokens (transformers counts them as special, llama.cpp as control)
SPECIAL_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token", "sep_token", "cls_token")

# Control tokens that end an assistant turn, in chat templates of the Llama family (llama.cpp's EOT).
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|eot|>", "<end_of_turn>")

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = (
    gguf.TokenType.NORMAL,
    gguf.TokenType.UNKNOWN,
    gguf.TokenType.CONTROL,
    gguf.TokenType.USER_DEFINED,
    gguf.TokenType.UNUSED,
    gguf.TokenType.BYTE,
)


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SentencePiece) or "gemma4"
    pre: str | None  # tokenizer.ggml.pre (None: the model implies it)
    tokens: list[str | bytes]
    types: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab = field(repr=False)
    add_bos: bool
    add_eos: bool
    eot_id: int | None
    add_space_prefix: bool | None  # SentencePiece: tokenizer_config's add_prefix_space, else False for a model without one

    def add_to_gguf(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.pre is not None:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        self.special.add_to_gguf(w, quiet=True)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        if self.eot_id is not None:
            w.add_eot_token_id(self.eot_id)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)


def looks_special(text: str) -> bool:
    """Added tokens shaped like control tokens (`<|...|>`) act as control tokens even if not flagged."""
    return text.startswith("<|") and text.endswith("|>")


def load_vocab(folder: Path, n_vocab: int, kind: str | None = None) -> Vocab:
    """The vocabulary of `folder`, padded to the model's `n_vocab` rows; `kind` names a tokenizer type an
    architecture has of its own in llama.cpp (else the files decide)."""
    tok_json = read_json(folder / "tokenizer.json")
    if tok_json is not None and not isinstance(tok_json, dict):
        raise EdgeError(f"tokenizer.json in {folder} is not a JSON object")
    if kind == "gemma4":
        try:
            return _gemma4_vocab(folder, tok_json, n_vocab)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EdgeError(f"malformed tokenizer.json in {folder}: {type(exc).__name__} {exc}") from exc
    if tok_json is not None and is_byte_level_bpe(tok_json):
        return _bpe_vocab(folder, tok_json, n_vocab)
    if (folder / "tokenizer.model").is_file():
        return _sentencepiece_vocab(folder, n_vocab)
    if tok_json is not None:
        try:
            return _sentencepiece_json_vocab(folder, tok_json, n_vocab)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a file from anywhere: any field may be off
            raise EdgeError(f"malformed tokenizer.json in {folder}: {type(exc).__name__} {exc}") from exc
    raise EdgeError(f"missing tokenizer in {folder}: expected tokenizer.json (byte-level BPE, or SentencePiece BPE with byte fallback) or tokenizer.model (SentencePiece)")


def is_byte_level_bpe(tok_json: dict[str, Any]) -> bool:
    model, decoder = tok_json.get("model"), tok_json.get("decoder")
    return isinstance(model, dict) and model.get("type") == "BPE" and isinstance(decoder, dict) and decoder.get("type") == "ByteLevel"


def pre_tokenizer_steps(pre: dict[str, Any] | None) -> tuple[tuple[str, ...], ...]:
    """The pre-tokenizer as a tuple of steps that matter for splitting (a key into PRE_TOKENIZERS)."""
    if not pre:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(step for p in pre.get("pretokenizers", []) for step in pre_tokenizer_steps(p))
    if kind == "ByteLevel":
        use_regex, prefix = bool(pre.get("use_regex", True)), bool(pre.get("add_prefix_space"))
        # Without its regex or a prefix space, ByteLevel only maps bytes to symbols: nothing to split.
        return (("byte_level", f"use_regex={use_regex}", f"add_prefix_space={prefix}"),) if use_regex or prefix else ()
    if kind == "Split":
        pattern = pre.get("pattern") or {}
        regex = pattern.get("Regex", pattern.get("String"))
        options = (pre.get("behavior"), bool(pre.get("invert")))
        if options != ("Isolated", False):
            return (("split", str(regex), *map(str, options)),)
        return (("split", str(regex)),)
    if kind == "Digits":
        return (("digits",) if pre.get("individual_digits") else ("digits_grouped",),)
    return ((str(kind), *(f"{k}={v}" for k, v in sorted(pre.items()) if k != "type")),)


def detect_pre(tok_json: dict[str, Any]) -> str:
    steps = pre_tokenizer_steps(tok_json.get("pre_tokenizer"))
    try:
        return PRE_TOKENIZERS[steps]
    except KeyError:
        shown = "; ".join(" ".join(s) for s in steps) or "none"
        known = ", ".join(sorted(set(PRE_TOKENIZERS.values())))
        raise EdgeError(f"unrecognised BPE pre-tokenizer structure ({shown}); known structures: {known}") from None


def _bpe_vocab(folder: Path, tok_json: dict[str, Any], n_vocab: int) -> Vocab:
    pre = detect_pre(tok_json)
    normalizer = (tok_json.get("normalizer") or {}).get("type")
    if normalizer not in BPE_NORMALIZERS:
        raise EdgeError(f"unsupported tokenizer normalizer {normalizer} in tokenizer.json: llama.cpp would tokenize differently")
    by_id: dict[int, str] = {i: t for t, i in tok_json["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok_json.get("added_tokens", []) if a["id"] < n_vocab}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= n_vocab:
        raise EdgeError(f"tokenizer has token id {max(by_id)} but the model has only {n_vocab} embedding rows")
    tokens: list[str | bytes] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") or looks_special(by_id[i]) else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    special = _special_vocab(folder, n_vocab, load_merges=True)
    if not special.merges:
        raise EdgeError(f"tokenizer.json in {folder} has no BPE merges")
    return _finish(folder, "gpt2", pre, tokens, types, None, special, default_add_bos=False)


def _sentencepiece_vocab(folder: Path, n_vocab: int) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(folder / "tokenizer.model"))
    except (OSError, RuntimeError) as exc:
        raise EdgeError(f"cannot read tokenizer.model in {folder}: {exc}") from exc
    if sp.vocab_size() > n_vocab:
        raise EdgeError(f"tokenizer.model has {sp.vocab_size()} pieces but the model has only {n_vocab} embedding rows")
    tokens: list[str | bytes] = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [UNUSED] * n_vocab
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = (
            UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i) else BYTE if sp.IsByte(i) else NORMAL
        )
    # Tokens added on top of the SentencePiece model (added_tokens.json, tokenizer_config's decoder table).
    extra = {int(i): {"content": t} for t, i in (read_json(folder / "added_tokens.json") or {}).items()}
    extra.update({int(i): d for i, d in ((read_json(folder / "tokenizer_config.json") or {}).get("added_tokens_decoder") or {}).items()})
    _set_added(tokens, types, scores, extra)
    special = _special_vocab(folder, n_vocab, load_merges=False)
    # llama.cpp prefixes a space unless told otherwise; Gemma's model does not (add_dummy_prefix off).
    space_prefix = None if sp.EncodeAsPieces("a")[0].startswith("\u2581") else False
    return _finish(folder, "llama", "default", tokens, types, scores, special, default_add_bos=True, space_prefix=space_prefix)


def _set_added(
    tokens: list[str | bytes], types: list[int], scores: list[float], added: dict[int, dict[str, Any]], named: Collection[str] = ()
) -> None:
    """Tokens added on top of the SentencePiece pieces, as llama.cpp's converter types and scores them."""
    for i, data in sorted(added.items()):
        if i >= len(tokens):
            continue
        text = data["content"]
        if data.get("special") or text in named or looks_special(text):
            types[i] = CONTROL
        else:
            text = text.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalised
            types[i] = USER_DEFINED
        tokens[i] = text.encode("utf-8")
        scores[i] = -1000.0


def _spm_steps(node: dict[str, Any] | None) -> tuple[tuple[str, ...], ...]:
    """A normalizer or pre-tokenizer as a tuple of steps (a key part into SPM_STRUCTURES)."""
    if not node:
        return ()
    kind = node.get("type")
    if kind == "Sequence":
        parts = node.get("normalizers", node.get("pretokenizers", []))
        return tuple(step for p in parts for step in _spm_steps(p))
    if kind == "Replace":
        pattern = node.get("pattern") or {}
        return (("replace", str(pattern.get("String", pattern.get("Regex"))), str(node.get("content"))),)
    if kind == "Prepend":
        return (("prepend", str(node.get("prepend"))),)
    if kind == "Metaspace":
        # older files say add_prefix_space instead of prepend_scheme
        scheme = node.get("prepend_scheme") or ("always" if node.get("add_prefix_space", True) else "never")
        return (("metaspace", str(node.get("replacement")), str(scheme), str(bool(node.get("split", True)))),)
    return pre_tokenizer_steps(node)


def _sentencepiece_json_vocab(folder: Path, tok_json: dict[str, Any], n_vocab: int) -> Vocab:
    """SentencePiece's BPE with byte fallback read from tokenizer.json alone, written as llama.cpp's converter
    writes it from tokenizer.model: the merged pieces scored by merge order (SentencePiece gives the n-th
    piece learned the score -n, and transformers orders the merges the same way), `<0xNN>` pieces as bytes."""
    model = tok_json.get("model") or {}
    kind = model.get("type")
    if kind == "Unigram":
        raise EdgeError(
            f"unsupported tokenizer in {folder}: tokenizer.json holds a Unigram model and there is no tokenizer.model; "
            "llama.cpp's SentencePiece tokenizer merges pieces by score instead of finding the most likely split, "
            "so its token ids would differ from the model's (llama.cpp's own converter refuses it too)"
        )
    if kind != "BPE" or not model.get("byte_fallback") or model.get("ignore_merges"):
        shown = f"{kind} model" + (" without byte fallback" if kind == "BPE" and not model.get("byte_fallback") else "")
        raise EdgeError(
            f"unsupported tokenizer in {folder}: tokenizer.json holds a {shown} (neither byte-level BPE nor "
            "SentencePiece BPE with byte fallback) and there is no tokenizer.model"
        )
    structure = (_spm_steps(tok_json.get("normalizer")), _spm_steps(tok_json.get("pre_tokenizer")))
    if structure not in SPM_STRUCTURES:
        shown = "; ".join(" ".join(repr(p) if p != p.strip() else p for p in s) for s in structure[0] + structure[1]) or "none"
        raise EdgeError(
            f"unsupported SentencePiece-style tokenizer.json in {folder}: its normalizer and pre-tokenizer ({shown}) "
            "do more than turn spaces into \u2581, which llama.cpp would not repeat"
        )
    vocab, added, named = _json_tokens(folder, tok_json, n_vocab)

    tokens: list[str | bytes] = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [UNUSED] * n_vocab
    unk = model.get("unk_token")
    pieces = {i: t for t, i in vocab.items() if i not in added}
    for i, text in pieces.items():
        tokens[i] = text.encode("utf-8")
        scores[i] = 0.0
        types[i] = BYTE if BYTE_PIECE.fullmatch(text) else UNKNOWN if text == unk else NORMAL
    for rank, i in enumerate(_learned_order(model, vocab, [i for i in sorted(pieces) if types[i] == NORMAL])):
        scores[i] = -float(rank)
    _set_added(tokens, types, scores, added, named)
    special = _special_vocab(folder, n_vocab, load_merges=False)
    space_prefix = None if SPM_STRUCTURES[structure] else False
    # transformers 5 keeps add_bos_token only in the post-processor's template, which gguf-py reads only
    # when it starts with a special token: a template that does not means no BOS, not llama.cpp's default.
    post = tok_json.get("post_processor") or {}
    leading = (post.get("single") or [{}])[0]
    add_bos = post.get("type") != "TemplateProcessing" or "SpecialToken" in leading
    return _finish(folder, "llama", "default", tokens, types, scores, special, default_add_bos=add_bos, space_prefix=space_prefix)


# Gemma 4's markers that llama.cpp always renders, so that its chat parser can read them.
GEMMA4_VISIBLE = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}


def _gemma4_vocab(folder: Path, tok_json: dict[str, Any] | None, n_vocab: int) -> Vocab:
    """Gemma 4's tokenizer as llama.cpp's "gemma4" type: tokenizer.json's BPE pieces and merges (spaces as
    \u2581, byte fallback), every token scored -1000, special tokens as control tokens."""
    model = (tok_json or {}).get("model") or {}
    if tok_json is None or model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise EdgeError(f"unsupported tokenizer in {folder}: Gemma 4 needs tokenizer.json with a BPE model with byte fallback")
    vocab, added, named = _json_tokens(folder, tok_json, n_vocab)
    tokens: list[str | bytes] = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text.encode("utf-8")
        types[i] = BYTE if BYTE_PIECE.fullmatch(text) else NORMAL
    for i, data in added.items():
        text = data["content"]
        tokens[i] = text.encode("utf-8")
        types[i] = CONTROL if data.get("special") or text in named else USER_DEFINED
    for i, t in enumerate(tokens):
        if types[i] != UNUSED and t.decode("utf-8", "replace") in GEMMA4_VISIBLE:
            types[i] = USER_DEFINED
    special = _special_vocab(folder, n_vocab, load_merges=True)
    vocab_out = _finish(folder, "gemma4", None, tokens, types, [-1000.0] * n_vocab, special, default_add_bos=True, space_prefix=False)
    vocab_out.add_bos = True  # llama.cpp's converter always adds <bos> for Gemma 4
    return vocab_out


def _json_tokens(folder: Path, tok_json: dict[str, Any], n_vocab: int) -> tuple[dict[str, int], dict[int, dict[str, Any]], set[str]]:
    """tokenizer.json's pieces (text -> id), its added tokens by id and the texts named special; token ids
    checked to fit the model's rows."""
    vocab: dict[str, int] = tok_json["model"].get("vocab") or {}
    added = {int(a["id"]): a for a in tok_json.get("added_tokens", [])}
    # tokenizer_config's table, where there is one, decides as it does beside tokenizer.model
    config = read_json(folder / "tokenizer_config.json") or {}
    added.update({int(i): d for i, d in (config.get("added_tokens_decoder") or {}).items()})
    ids = [*vocab.values(), *added]
    if not all(type(i) is int and i >= 0 for i in ids):
        raise EdgeError(f"tokenizer.json in {folder} has a token id that is not a whole number from 0")
    top = max(ids, default=-1)
    if top >= n_vocab:
        raise EdgeError(f"tokenizer has token id {top} but the model has only {n_vocab} embedding rows")
    return vocab, added, _named_special_tokens(config)


def _named_special_tokens(config: dict[str, Any]) -> set[str]:
    """The texts tokenizer_config.json names as special tokens: single fields, and the extra ones as a list
    or (transformers 5, multimodal models) a table; each a string or a serialised AddedToken."""
    found: list[Any] = [config.get(f) for f in SPECIAL_FIELDS]
    for key in ("extra_special_tokens", "additional_special_tokens"):
        extra = config.get(key) or []
        found.extend(extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else [])
    texts = (t.get("content") if isinstance(t, dict) else t for t in found)
    return {t for t in texts if isinstance(t, str)}


def _learned_order(model: dict[str, Any], vocab: dict[str, int], normal: list[int]) -> list[int]:
    """The normal pieces in the order SentencePiece learned them: pieces made by a merge in the order of their
    first merge, then the single characters no merge makes, by id. For a tokenizer.json made from a
    SentencePiece model this is id order; llama.cpp's tokenizer then merges by score as BPE does by rank."""
    first: dict[int, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = vocab.get(left + right)
        if i is not None:
            first.setdefault(i, rank)
    return sorted(normal, key=lambda i: (i not in first, first.get(i, 0), i))


def _special_vocab(folder: Path, n_vocab: int, load_merges: bool) -> gguf.SpecialVocab:
    """Merges, special token ids, add-BOS/EOS flags and the chat template, read by gguf-py."""
    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)  # its notes on unusual post-processors are not the user's concern
    try:
        return gguf.SpecialVocab(folder, load_merges=load_merges, n_vocab=n_vocab)
    finally:
        log.setLevel(level)


def _finish(
    folder: Path,
    model: str,
    pre: str,
    tokens: list[str | bytes],
    types: list[int],
    scores: list[float] | None,
    special: gguf.SpecialVocab,
    default_add_bos: bool,
    space_prefix: bool | None = None,
) -> Vocab:
    config = read_json(folder / "config.json") or {}
    eos = config.get("eos_token_id")
    if "eos" not in special.special_token_ids and isinstance(eos, list) and eos:
        special.special_token_ids["eos"] = int(eos[0])
    # add_bos/add_eos are always written: llama.cpp's defaults differ per tokenizer type from transformers'.
    add_bos = special.add_special_token.pop("bos", default_add_bos)
    add_eos = special.add_special_token.pop("eos", False)
    texts = {t if isinstance(t, str) else t.decode("utf-8", "replace"): i for i, t in enumerate(tokens) if types[i] == CONTROL}
    eot_id = next((texts[t] for t in EOT_TEXTS if t in texts), None)
    prefix = (read_json(folder / "tokenizer_config.json") or {}).get("add_prefix_space")
    add_space_prefix = prefix if model == "llama" and isinstance(prefix, bool) else space_prefix
    return Vocab(model, pre, tokens, types, scores, special, add_bos, add_eos, eot_id, add_space_prefix)
