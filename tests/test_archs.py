"""Qwen3, Qwen3-MoE, Gemma 2/3/4, Phi-3, Mixtral and SmolLM3 through the converter, against transformers (token ids,
logits, chat template), llama.cpp (runs the GGUF) and llama.cpp's own convert_hf_to_gguf.py (same tensor
bytes and metadata)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import arch_fixtures
from conftest import llama
from edgellm.cli import main
from edgellm.formats.gguf_info import read_gguf
from test_convert import MESSAGES, TEXT, _fields, assert_same_tensors, render_stored_template

CHECKPOINTS = arch_fixtures.CHECKPOINTS
MOE = {"qwen3moe", "mixtral"}
CLEANS_SPACES = NEAR_TIES = {"gemma4", "gemma4mm"}
# llama.cpp's converter refuses BPE tokenizers it does not know by hash: these are compared with the
# pre-tokenizer named (their tensors do not depend on it).
NAMED_PRE = {"qwen3": "qwen2", "qwen3moe": "qwen2", "smollm3": "qwen2"}
# outtype for the comparison with llama.cpp's converter ("auto" keeps each fixture's stored precision)
REF_OUTTYPE = {"qwen3": "bf16", "qwen3moe": "f32", "gemma2": "bf16", "gemma3": "bf16", "gemma4": "bf16", "gemma4mm": "bf16", "phi3": "f16", "mixtral": "bf16", "smollm3": "bf16"}
# llama.cpp's converter needs `architectures` in config.json; the Gemma 3 fixture has only model_type.
REF_ARCHITECTURES = {"gemma3": "Gemma3ForCausalLM"}
# Keys written differently on purpose (see test_convert.py).
EXPECTED_DIFFERENT = {"general.name", "general.size_label", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.eot_token_id"}
# Keys edgellm always writes where llama.cpp's converter leaves some architectures to llama.cpp's defaults
# (same values), and the layer pattern of sliding windows, written from the config.
EDGELLM_ONLY = {"tokenizer.ggml.add_bos_token", "{arch}.vocab_size", "{arch}.rope.dimension_count", "{arch}.rope.freq_base",
                "{arch}.attention.sliding_window_pattern"}


def _reference(name: str) -> Path:
    ckpt = CHECKPOINTS[name]()
    if name in REF_ARCHITECTURES:
        ckpt = arch_fixtures.with_architectures(name, ckpt, REF_ARCHITECTURES[name])
    return arch_fixtures.llamacpp_reference_gguf(name, ckpt, REF_OUTTYPE[name], NAMED_PRE.get(name))


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_token_ids_match_transformers(name, converted, hf_tokenizer):
    llm = llama(converted(name), vocab_only=True)
    tok = hf_tokenizer(name)
    expected = tok(TEXT)["input_ids"]
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=False) == expected
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == tok(prompt, add_special_tokens=False)["input_ids"]
    text_ids = expected[1:] if expected[0] == llm.token_bos() else expected
    text = tok.decode(expected, skip_special_tokens=True)
    if name in CLEANS_SPACES:  # llama.cpp's gemma4 tokenizer type drops the space before an apostrophe when it
        text = text.replace(" '", "'")  # detokenizes (the token ids match; only the decoded text differs)
    assert _detokenize(llm, text_ids) == text


def _detokenize(llm, ids: list[int]) -> str:
    """llama.cpp's own detokenizer: drops special tokens and the space SentencePiece prefixed to the text."""
    import ctypes

    import llama_cpp as L

    vocab = L.llama_model_get_vocab(llm.model)
    arr = (L.llama_token * len(ids))(*ids)
    buf = ctypes.create_string_buffer(16 * len(ids) + 64)
    n = L.llama_detokenize(vocab, arr, len(ids), buf, len(buf), True, False)
    assert n >= 0
    return buf.raw[:n].decode()


def _logits_vs_transformers(path: Path, name: str, ids: list[int]) -> tuple[float, float]:
    """Mean cosine of the next-token logits and the share of positions with the same top token."""
    import torch
    from transformers import AutoModelForCausalLM

    llm = llama(path, logits_all=True)
    llm.eval(ids)
    ours = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINTS[name](), dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    assert ours.shape == ref.shape
    cosine = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return float(cosine.mean()), float((ours.argmax(1) == ref.argmax(1)).mean())


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_logits_match_transformers(name, converted, hf_tokenizer):
    """256 positions: well past the 16-token sliding windows of the Gemma fixtures."""
    ids = hf_tokenizer(name)((TEXT + "\n") * 12)["input_ids"][:256]
    assert len(ids) == 256
    cosine, top1 = _logits_vs_transformers(converted(name), name, ids)
    print(f"\n{name}: cosine {cosine:.6f}, top-1 agreement {top1:.4f}")
    if name in MOE:
        # Random routers make near-ties between experts, where float rounding picks another expert: as
        # close as llama.cpp's own conversion gets (its F32 conversion, run the same way).
        ref_cosine, ref_top1 = _logits_vs_transformers(arch_fixtures.llamacpp_reference_gguf(
            f"{name}-f32", CHECKPOINTS[name](), "f32", NAMED_PRE.get(name)), name, ids)
        print(f"{name} via llama.cpp's converter: cosine {ref_cosine:.6f}, top-1 agreement {ref_top1:.4f}")
        assert cosine >= ref_cosine - 1e-6 and top1 >= ref_top1
        assert cosine >= 0.999
    else:
        assert cosine >= 0.9999
        # Gemma 4's soft-capped logits of random weights leave near-ties: its 3 of 256 disagreements (in F32
        # too) are between tokens under 0.006 apart, less than the 0.03 the two computations differ by.
        assert top1 >= (0.98 if name in NEAR_TIES else 0.99)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_chat_template_renders_like_transformers(name, converted, hf_tokenizer):
    rendered = render_stored_template(converted(name))
    assert rendered == hf_tokenizer(name).apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_identical_to_llamacpp_converter(name, converted):
    ref_meta, ref_tensors = _fields(_reference(name))
    meta, tensors = _fields(converted(name, "auto"))
    arch = read_gguf(converted(name, "auto")).arch
    ours_only = {k.format(arch=arch) for k in EDGELLM_ONLY}
    for key in sorted(set(ref_meta) | set(meta)):
        if key in EXPECTED_DIFFERENT or (key in ours_only and key not in ref_meta):
            continue
        if key == "tokenizer.ggml.pre" and name in NAMED_PRE:
            continue
        assert key in meta and key in ref_meta, key
        assert meta[key] == ref_meta[key], key
    assert_same_tensors(tensors, ref_tensors)


def test_architecture_metadata(converted):
    """What llama.cpp's graphs read beyond the common keys."""
    g2 = read_gguf(converted("gemma2")).metadata
    assert g2["gemma2.attention.sliding_window"] == 16
    assert g2["gemma2.attention.sliding_window_pattern"] == [True, False]  # from the architecture's period of 2
    assert g2["gemma2.attn_logit_softcapping"] == 50.0 and g2["gemma2.final_logit_softcapping"] == 30.0
    assert g2["tokenizer.ggml.add_space_prefix"] is False  # the SentencePiece model has no dummy prefix
    assert g2["tokenizer.ggml.eot_token_id"] == 6  # <end_of_turn>
    g3 = read_gguf(converted("gemma3")).metadata
    assert g3["general.architecture"] == "gemma3"  # found by model_type gemma3_text
    assert g3["gemma3.attention.sliding_window_pattern"] == [True] * 5 + [False, True]
    assert g3["gemma3.rope.freq_base"] == 1000000.0 and g3["gemma3.rope.freq_base_swa"] == 10000.0
    assert g3["gemma3.rope.scaling.type"] == "linear" and g3["gemma3.rope.scaling.factor"] == 8.0
    g4 = read_gguf(converted("gemma4"))
    assert g4.metadata["gemma4.attention.key_length"] == 32 and g4.metadata["gemma4.attention.key_length_swa"] == 16
    assert g4.metadata["gemma4.rope.dimension_count"] == 32 and g4.metadata["gemma4.rope.dimension_count_swa"] == 16
    assert g4.metadata["tokenizer.ggml.model"] == "gemma4" and "tokenizer.ggml.pre" not in g4.metadata
    assert {t.name: t.shape for t in g4.tensors}["blk.5.attn_q.weight"] == (64, 128)  # the global layer's wider heads
    # the multimodal class: its text model alone, as llama.cpp's converter writes it (no vision tensors)
    mm = read_gguf(converted("gemma4mm"))
    assert mm.arch == "gemma4" and not any("vision" in t.name or "mm" in t.name for t in mm.tensors)
    # keys double as values in its global layer: one KV head there, no V projection (llama.cpp reuses K)
    assert {t.name for t in mm.tensors} == {t.name for t in g4.tensors} - {"blk.5.attn_v.weight"}
    assert mm.metadata["gemma4.attention.head_count_kv"] == [2, 2, 2, 2, 2, 1]
    moe = read_gguf(converted("qwen3moe")).metadata
    assert (moe["qwen3moe.expert_count"], moe["qwen3moe.expert_used_count"], moe["qwen3moe.expert_feed_forward_length"]) == (8, 2, 48)
    mixtral = read_gguf(converted("mixtral"))
    assert (mixtral.metadata["llama.expert_count"], mixtral.metadata["llama.expert_used_count"]) == (4, 2)
    shapes = {t.name: t.shape for t in mixtral.tensors}
    assert shapes["blk.1.ffn_down_exps.weight"] == (96, 64, 4)  # GGUF order: n_ff, n_embd, experts
    assert {t.name: t.ggml_type for t in read_gguf(converted("mixtral", "q8_0")).tensors}["blk.0.ffn_gate_inp.weight"] == "F32"
    phi = read_gguf(converted("phi3"))
    assert phi.metadata["phi3.rope.dimension_count"] == 12  # partial rotary factor 0.75 of 16
    assert phi.metadata["phi3.rope.scaling.original_context_length"] == 4096
    assert {"rope_factors_long.weight", "rope_factors_short.weight", "blk.0.attn_qkv.weight"} <= {t.name for t in phi.tensors}


# --- configs llama.cpp would run differently, and damaged MoE checkpoints ----------------------------------


def _edited(tmp_path: Path, name: str, edit) -> Path:
    dst = tmp_path / name
    shutil.copytree(CHECKPOINTS[name](), dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg, dst)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _drop_expert(cfg: dict, folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(weights, folder / "model.safetensors")


BAD_CONFIGS = [
    ("gemma2", lambda c, d: c.update(query_pre_attn_scalar=32), r"query_pre_attn_scalar"),
    ("gemma3", lambda c, d: c.update(attn_logit_softcapping=50.0), r"attn_logit_softcapping"),
    ("qwen3moe", lambda c, d: c.update(norm_topk_prob=False), r"norm_topk_prob"),
    ("qwen3moe", lambda c, d: c.update(mlp_only_layers=[0]), r"dense"),
    ("qwen3moe", lambda c, d: c.update(num_experts_per_tok=9), r"num_experts_per_tok"),
    ("mixtral", lambda c, d: c.update(num_local_experts=10**9), r"out of range \(1 to 1024 experts\)"),
    ("qwen3moe", _drop_expert, r"lacks tensor model\.layers\.1\.mlp\.experts\.5\.up_proj\.weight"),
    ("qwen3", lambda c, d: c.update(use_sliding_window=True), r"use_sliding_window"),
    ("phi3", lambda c, d: c["rope_parameters"].update(long_factor=[1.0, 2.0]), r"long_factor must list 6"),
    ("phi3", lambda c, d: c["rope_parameters"].update(short_factor=["x"] * 6), r"short_factor must list 6 numbers"),
    ("gemma2", lambda c, d: c.update(sliding_window=-4), r"bad value for sliding_window: -4"),
    ("gemma2", lambda c, d: c.update(final_logit_softcapping="30"), r"bad value for final_logit_softcapping: '30'"),
    ("gemma3", lambda c, d: c.update(sliding_window=None), r"lacks 'sliding_window'"),
    ("gemma2", lambda c, d: c.update(query_pre_attn_scalar="16"), r"query_pre_attn_scalar"),
    ("phi3", lambda c, d: [c.pop("original_max_position_embeddings"), c["rope_parameters"].pop("original_max_position_embeddings")],
     r"original_max_position_embeddings above 1, not None"),
    ("gemma3", lambda c, d: c.update(architectures=["Gemma3ForConditionalGeneration"]), r"lacks the text model's settings \(text_config\)"),
    ("gemma4", lambda c, d: c.update(enable_moe_block=True), r"experts \(enable_moe_block\)"),
    ("gemma4", lambda c, d: c.update(hidden_size_per_layer_input=256), r"per-layer input embeddings"),
    ("gemma4", lambda c, d: c.update(num_kv_shared_layers=2), r"share KV caches"),
    ("gemma4", lambda c, d: c.update(attention_k_eq_v=True), r"does not use: model\.layers\.5\.self_attn\.v_proj\.weight"),
    ("gemma4", lambda c, d: c.update(num_global_key_value_heads=1), r"num_global_key_value_heads is set without attention_k_eq_v"),
    ("gemma4", lambda c, d: c.update(use_bidirectional_attention="all"), r"attends causally"),
    ("gemma4", lambda c, d: c.update(hidden_activation="gelu"), r"hidden_activation"),
    ("gemma4", lambda c, d: c["rope_parameters"]["full_attention"].update(rope_type="default"), r"not proportional"),
    ("gemma4", lambda c, d: c.pop("per_layer_config"), r"global layers' head size"),
    ("gemma4", lambda c, d: c.update(per_layer_config={"5": {"head_dim": 0}}), r"out of range"),
    ("gemma4", lambda c, d: c.update(per_layer_config={"5": [32]}), r"config\.json has a bad value"),
    ("gemma4", lambda c, d: (d / "tokenizer.json").unlink(), r"Gemma 4 needs tokenizer\.json with a BPE model with byte fallback"),
    ("gemma4mm", lambda c, d: c.pop("text_config"), r"lacks the text model's settings \(text_config\)"),
    ("gemma4mm", lambda c, d: c["text_config"].update(enable_moe_block=True), r"Gemma4ForCausalLM faithfully: its layers have experts"),
    ("smollm3", lambda c, d: c.update(no_rope_layers=[1, 1, 0, 1, 1, 1, 0, 1]), r"no_rope_layers is not every fourth layer"),
    ("smollm3", lambda c, d: [c.pop("no_rope_layers"), c.update(no_rope_layer_interval=3)], r"no_rope_layers is not every fourth layer"),
    ("smollm3", lambda c, d: c.update(layer_types=["sliding_attention"] * 8), r"layer_types has sliding-window layers"),
]


@pytest.mark.parametrize("name,edit,pattern", BAD_CONFIGS)
def test_bad_configs_are_refused_in_one_line(name, edit, pattern, tmp_path, capsys):
    import re

    src = _edited(tmp_path, name, edit)
    out = tmp_path / "out.gguf"
    rc = main(["convert", "-q", str(src), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("edgellm: "), err
    assert re.search(pattern, err), err
    assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))


@pytest.mark.slow
def test_moe_conversion_streams_expert_by_expert(tmp_path):
    """A 768 MB layer of 64 experts converts with far less memory than the layer: experts are read in chunks
    and written one after another into the stacked tensor, never gathered. VmHWM is the child's own peak."""
    import subprocess
    import sys

    from safetensors.numpy import save_file

    src = tmp_path / "moe"
    shutil.copytree(CHECKPOINTS["qwen3moe"](), src)
    cfg = json.loads((src / "config.json").read_text())
    n_embd, n_ff, n_expert = 1024, 1024, 64
    cfg.update(hidden_size=n_embd, moe_intermediate_size=n_ff, num_experts=n_expert, num_hidden_layers=1, num_attention_heads=8,
               num_key_value_heads=4, head_dim=128)
    (src / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    row = lambda *shape: rng.standard_normal(shape[-1], dtype=np.float32) * np.ones(shape, np.float32)  # noqa: E731
    weights = {
        "model.embed_tokens.weight": row(1024, n_embd), "lm_head.weight": row(1024, n_embd), "model.norm.weight": row(n_embd),
        "model.layers.0.input_layernorm.weight": row(n_embd), "model.layers.0.post_attention_layernorm.weight": row(n_embd),
        "model.layers.0.self_attn.q_proj.weight": row(1024, n_embd), "model.layers.0.self_attn.k_proj.weight": row(512, n_embd),
        "model.layers.0.self_attn.v_proj.weight": row(512, n_embd), "model.layers.0.self_attn.o_proj.weight": row(n_embd, 1024),
        "model.layers.0.self_attn.q_norm.weight": row(128), "model.layers.0.self_attn.k_norm.weight": row(128),
        "model.layers.0.mlp.gate.weight": row(n_expert, n_embd),
    }
    save_file(weights, src / "model.safetensors")
    experts = {}
    for x in range(n_expert):
        for w, shape in (("gate_proj", (n_ff, n_embd)), ("up_proj", (n_ff, n_embd)), ("down_proj", (n_embd, n_ff))):
            experts[f"model.layers.0.mlp.experts.{x}.{w}.weight"] = row(*shape)
    save_file(experts, src / "experts.safetensors")
    del experts
    index = {"weight_map": {**{n: "model.safetensors" for n in weights},
                            **{f"model.layers.0.mlp.experts.{x}.{w}.weight": "experts.safetensors"
                               for x in range(n_expert) for w in ("gate_proj", "up_proj", "down_proj")}}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    expert_bytes = (src / "experts.safetensors").stat().st_size
    code = (
        "import sys, re; from edgellm.quantize.convert import convert_checkpoint; "
        "convert_checkpoint(sys.argv[1], sys.argv[2], 'f16', progress=False); "
        "print(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read()).group(1))"
    )
    out = tmp_path / "moe.gguf"
    run = subprocess.run([sys.executable, "-c", code, str(src), str(out)], capture_output=True, text=True, check=True)
    peak = int(run.stdout.split()[-1]) * 1024
    print(f"\npeak RSS {peak / 2**20:.0f} MiB converting {expert_bytes / 2**20:.0f} MiB of experts")
    assert peak < 0.3 * expert_bytes, (peak, expert_bytes)
    info = read_gguf(out)
    assert {t.name: t.shape for t in info.tensors}["blk.0.ffn_up_exps.weight"] == (n_embd, n_ff, n_expert)
