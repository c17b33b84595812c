"""The converter against its oracles: transformers (token ids, logits, chat template), llama.cpp (runs the
GGUF) and llama.cpp's own convert_hf_to_gguf.py (same tensor bytes and metadata values)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fixtures
from edgellm.errors import EdgeError
from edgellm.formats.gguf_info import read_gguf
from conftest import llama
from edgellm.quantize.convert import convert_checkpoint

CHECKPOINTS = fixtures.CHECKPOINTS
# mean cosine of next-token logits vs transformers: a trained model must match tighter than random weights
MIN_COSINE = {"smollm2": 0.99999, "llama3": 0.9999, "mistral": 0.9999, "qwen2": 0.9999}

TEXT = (
    "Hello world! It's 2024: 1234567 apples cost $3.50, and we've got 42 more.\n\n"
    "    def square(x):\n\treturn x ** 2  # squared\n"
    "中文测试：你好，世界！今天天气很好。 🙂🚀🎉 emoji   and   runs     of spaces\n\n\n"
    "Ünïcödé naïve café — «quotes» 'single' \"double\"\t\ttabs  trailing  "
)
MESSAGES = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan? 日本"},
]


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_token_ids_match_transformers(name, converted, hf_tokenizer):
    llm = llama(converted(name), vocab_only=True)
    tok = hf_tokenizer(name)
    expected = tok(TEXT)["input_ids"]  # with the special tokens the tokenizer adds (BOS or none)
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=False) == expected
    # special tokens written in text are parsed as such when asked (chat prompts rely on it)
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == tok(prompt, add_special_tokens=False)["input_ids"]
    assert llm.detokenize(expected).decode() == tok.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_logits_match_transformers(name, converted, hf_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    ids = hf_tokenizer(name)((TEXT + "\n") * 12)["input_ids"][:256]
    assert len(ids) == 256
    llm = llama(converted(name), logits_all=True)
    llm.eval(ids)
    ours = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINTS[name](), dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    assert ours.shape == ref.shape
    cosine = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert cosine.mean() >= MIN_COSINE[name]


def render_stored_template(path: Path, **variables) -> str:
    """MESSAGES through the GGUF's own chat template, with its BOS/EOS text, as the engine renders it."""
    from edgellm.engine import chat_template

    info = read_gguf(path)
    assert info.chat_template
    llm = llama(path, vocab_only=True)

    def token_text(key: str) -> str:
        tid = info.metadata.get(f"tokenizer.ggml.{key}_token_id")
        return "" if tid is None else llm.detokenize([tid], special=True).decode()

    return chat_template.render(info.chat_template, MESSAGES, bos_token=token_text("bos"), eos_token=token_text("eos"), variables=variables)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_chat_template_renders_like_transformers(name, converted, hf_tokenizer):
    rendered = render_stored_template(converted(name))
    assert rendered == hf_tokenizer(name).apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def test_special_tokens_and_flags(converted):
    meta = read_gguf(converted("llama3", "auto")).metadata
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.bos_token_id"] == 128000
    assert meta["tokenizer.ggml.eos_token_id"] == 128009  # tokenizer_config's eos_token <|eot_id|>
    assert meta["tokenizer.ggml.eot_token_id"] == 128009
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["llama.vocab_size"] == 128256
    qwen = read_gguf(converted("qwen2", "auto")).metadata
    assert qwen["tokenizer.ggml.pre"] == "qwen2"
    assert qwen["tokenizer.ggml.add_bos_token"] is False
    assert qwen["qwen2.vocab_size"] == 1024  # embedding rows beyond the tokenizer are padding tokens
    mistral = read_gguf(converted("mistral", "auto")).metadata
    assert mistral["tokenizer.ggml.model"] == "llama"
    assert mistral["tokenizer.ggml.add_bos_token"] is True


def test_auto_keeps_source_precision(converted):
    """bf16 stays bf16, f16 stays f16, f32 stays f32; norms are always F32."""
    expected = {"llama3": ("BF16", "BF16"), "mistral": ("F16", "F16"), "qwen2": ("ALL_F32", "F32")}
    for name, (file_type, weight_type) in expected.items():
        info = read_gguf(converted(name, "auto"))
        types = {t.name: t.ggml_type for t in info.tensors}
        assert info.file_type == file_type, name
        assert types["blk.0.ffn_up.weight"] == weight_type
        assert types["blk.0.attn_norm.weight"] == "F32"
    llama3 = {t.name for t in read_gguf(converted("llama3", "auto")).tensors}
    assert "rope_freqs.weight" in llama3 and "output.weight" not in llama3  # llama3 rope scaling; tied embeddings
    index = json.loads((fixtures.qwen2_checkpoint() / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # read through the shard index
    qwen2 = {t.name for t in read_gguf(converted("qwen2", "auto")).tensors}
    assert {"blk.1.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias", "output.weight"} <= qwen2


def test_q8_0_runs_close_to_f32(converted):
    info = read_gguf(converted("smollm2", "q8_0"))
    assert info.file_type == "Q8_0"
    ids = list(range(1000, 1064))
    logits = []
    for outtype in ("f32", "q8_0"):
        llm = llama(converted("smollm2", outtype), logits_all=True)
        llm.eval(ids)
        logits.append(np.asarray(llm.scores[: len(ids)]))
    a, b = logits
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean() > 0.999


def _bf16_checkpoint_with(tmp_path: Path, value: float) -> Path:
    """The Llama 3 test checkpoint (bf16) with one weight set to `value`."""
    import torch
    from safetensors.torch import load_file, save_file

    src = fixtures.llama3_checkpoint()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).symlink_to(f)
    weights = load_file(src / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][3, 5] = torch.tensor(value, dtype=torch.bfloat16)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path


@pytest.mark.parametrize("value", [65536.0, 1e6, -65536.0])  # 65536: the smallest bfloat16 float16 cannot hold
def test_f16_overflow_from_bf16_source_is_reported(tmp_path, value):
    src = _bf16_checkpoint_with(tmp_path, value)
    out = tmp_path / "out.gguf"
    with pytest.raises(EdgeError, match=r"model\.layers\.1\.mlp\.down_proj\.weight.*float16.*bf16"):
        convert_checkpoint(src, out, "f16", progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    assert read_gguf(convert_checkpoint(src, out, "auto", progress=False)).file_type == "BF16"


def test_largest_bf16_below_f16_range_converts(tmp_path):
    from gguf import GGUFReader

    src = _bf16_checkpoint_with(tmp_path, -65280.0)  # bfloat16's largest magnitude below 65504
    out = convert_checkpoint(src, tmp_path / "out.gguf", "f16", progress=False)
    down = next(t for t in GGUFReader(out).tensors if t.name == "blk.1.ffn_down.weight")
    assert np.asarray(down.data)[3, 5] == np.float16(-65280.0)


# --- identical to llama.cpp's own converter ------------------------------------------------------------

# Keys edgellm writes differently on purpose: the name (folder name as is), a size label it does not
# guess, tokenizer flags llama.cpp leaves to defaults, and SmolLM2's pre-tokenizer: this checkpoint's
# tokenizer.json (made by transformers) splits with plain GPT-2 ByteLevel, which edgellm reads from its
# structure; llama.cpp guesses "smollm" from a hash of the original SmolLM tokenizer.
EXPECTED_DIFFERENT = {"general.name", "general.size_label", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.eot_token_id"}
PRE_DIFFERENT = {"smollm2": ("gpt-2", "smollm")}


def assert_same_tensors(tensors: dict, ref_tensors: dict) -> None:
    """The same tensor names, and each one's type, shape and bytes (tensors as `_fields` returns them)."""
    assert set(tensors) == set(ref_tensors)
    for tname, ref in ref_tensors.items():
        ours = tensors[tname]
        assert (ours.tensor_type, list(ours.shape)) == (ref.tensor_type, list(ref.shape)), tname
        assert np.array_equal(np.asarray(ours.data).view(np.uint8), np.asarray(ref.data).view(np.uint8)), tname


def _fields(path: Path) -> tuple[dict, dict]:
    """Metadata as each key's exact encoded bytes (key, type and value), and the tensors by name.

    A field's bytes run to the next field (the last one to the first tensor info); gguf_info's header
    reader steps over long arrays (Llama 3's 400k vocabulary strings) quickly."""
    from edgellm.formats.gguf_info import header_reader_class

    reader = header_reader_class()(path, "r")
    fields = sorted(reader.fields.values(), key=lambda f: f.offset)
    ends = [f.offset for f in fields[1:]] + [reader.tensors[0].field.offset]
    meta = {f.name: bytes(reader.data[f.offset : end]) for f, end in zip(fields, ends) if not f.name.startswith("GGUF.")}
    return meta, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize(
    "name,outtype,ref_outtype",
    [
        ("smollm2", "f16", "f16"),
        ("smollm2", "q8_0", "q8_0"),
        ("llama3", "auto", "bf16"),
        ("llama3", "f16", "f16"),  # bfloat16 -> float16, rounded as llama.cpp rounds
        ("mistral", "auto", "f16"),
    ],
)
def test_identical_to_llamacpp_converter(name, outtype, ref_outtype, converted):
    ref_meta, ref_tensors = _fields(fixtures.llamacpp_reference_gguf(name, CHECKPOINTS[name](), ref_outtype))
    meta, tensors = _fields(converted(name, outtype))
    for key in sorted(set(ref_meta) | set(meta)):
        if key in EXPECTED_DIFFERENT:
            continue
        if key == "tokenizer.ggml.pre" and name in PRE_DIFFERENT:
            ours_pre, ref_pre = PRE_DIFFERENT[name]
            assert meta[key].endswith(ours_pre.encode()) and ref_meta[key].endswith(ref_pre.encode())
            continue
        assert key in meta and key in ref_meta, key
        assert meta[key] == ref_meta[key], key
    assert_same_tensors(tensors, ref_tensors)


def test_converts_a_retrained_tokenizer_llamacpp_refuses(converted, tmp_path):
    """llama.cpp's converter knows tokenizers by a hash of their output; a retrained one is refused there,
    while edgellm recognises Qwen2's pre-tokenizer from the tokenizer's structure."""
    import os
    import subprocess
    import sys

    script = fixtures.llamacpp_converter()
    run = subprocess.run(
        [sys.executable, str(script), str(fixtures.qwen2_checkpoint()), "--outfile", str(tmp_path / "ref.gguf")],
        env={**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")},
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "pre-tokenizer" in (run.stdout + run.stderr)
    assert read_gguf(converted("qwen2", "auto")).metadata["tokenizer.ggml.pre"] == "qwen2"



def test_peak_memory_stays_far_below_the_checkpoint(tmp_path):
    """Tensors are streamed in chunks: converting the 538 MB F32 SmolLM2 checkpoint to f16 must not
    hold it (or even its largest tensor, 113 MB) in memory. VmHWM is the child's own peak RSS (rusage
    would carry over the forking test process's peak)."""
    import subprocess
    import sys

    src = fixtures.smollm2_checkpoint()
    weights = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    code = (
        "import sys, re; from edgellm.quantize.convert import convert_checkpoint; "
        "convert_checkpoint(sys.argv[1], sys.argv[2], 'f16', progress=False); "
        "print(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read()).group(1))"
    )
    run = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "m.gguf")], capture_output=True, text=True, check=True)
    peak = int(run.stdout.split()[-1]) * 1024
    assert peak < 0.3 * weights


def test_digest_fed_while_writing_is_the_files_sha256(tmp_path):
    import hashlib

    from edgellm.store.manifest import sha256_file

    digest = hashlib.sha256()
    out = convert_checkpoint(fixtures.llama3_checkpoint(), tmp_path / "out.gguf", "f16", progress=False, digest=digest)
    assert digest.hexdigest() == sha256_file(out)
