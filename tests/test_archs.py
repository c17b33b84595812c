"""Qwen3, Qwen3-MoE, Qwen3.5 (dense and MoE), Qwen3-Next, Gemma 2/3/4, Phi-3, Mixtral, SmolLM3, LFM2 and Granite 4
hybrids (dense and MoE) through the converter,
against transformers (token ids, logits, chat template), llama.cpp (runs the GGUF) and llama.cpp's own
convert_hf_to_gguf.py (same tensor bytes and metadata)."""

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
MOE = {"qwen3moe", "mixtral", "qwen35moe", "qwen3next", "gptoss", "gptoss-plain", "granite4h"}
CLEANS_SPACES = NEAR_TIES = {"gemma4", "gemma4mm"}
# llama.cpp's converter refuses BPE tokenizers it does not know by hash: these are compared with the
# pre-tokenizer named (their tensors do not depend on it).
NAMED_PRE = {"gptoss": "gpt-4o", "gptoss-plain": "gpt-4o", "qwen3": "qwen2", "qwen3moe": "qwen2", "smollm3": "qwen2", "qwen35": "qwen2",
             "qwen35moe": "qwen2", "qwen3next": "qwen2", "lfm2": "qwen2", "granite4h": "qwen2", "granite4hdense": "qwen2"}
# outtype for the comparison with llama.cpp's converter ("auto" keeps each fixture's stored precision)
REF_OUTTYPE = {
    "qwen3": "bf16", "qwen3moe": "f32", "gemma2": "bf16", "gemma3": "bf16", "gemma4": "bf16", "gemma4mm": "bf16", "phi3": "f16",
    "mixtral": "bf16", "smollm3": "bf16", "qwen35": "bf16", "qwen35moe": "bf16", "qwen3next": "bf16", "gptoss": "bf16", "gptoss-plain": "bf16",
    "lfm2": "bf16", "granite4h": "bf16", "granite4hdense": "bf16",
}
# llama.cpp's converter needs `architectures` in config.json; the Gemma 3 fixture has only model_type.
REF_ARCHITECTURES = {"gemma3": "Gemma3ForCausalLM"}
# Qwen3.5 checkpoints without a multi-token-prediction block convert in llama.cpp only with it declined.
REF_OPTIONS = {"qwen35": ("--no-mtp",), "qwen35moe": ("--no-mtp",), "qwen3next": ("--no-mtp",)}
# Keys written differently on purpose (see test_convert.py).
EXPECTED_DIFFERENT = {"general.name", "general.size_label", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.eot_token_id"}
# llama.cpp's converter declares a float file with MXFP4 experts MXFP4_MOE; edgellm names the float type, so that
# the package's base and its MXFP4_MOE level (experts kept, the rest Q8_0) are told apart.
DIFFERENT_FOR = {"gptoss": {"general.file_type"}}
# Granite 4 hybrids attend without rope: llama.cpp's converter writes a context of 2^20 for them, edgellm the
# context the model was made for (max_position_embeddings), which the planner then keeps to.
OWN_CONTEXT = {"granite4h", "granite4hdense"}
# Mamba2's decay is -exp(A_log): llama.cpp's converter takes torch's float32 exp, a unit in the last place off
# for some values; edgellm rounds the exact value once. Those tensors are compared to within that unit.
EXP_ROUNDED_ONCE = {"granite4h", "granite4hdense"}
# Keys edgellm always writes where llama.cpp's converter leaves some architectures to llama.cpp's defaults
# (same values), and the layer pattern of sliding windows, written from the config.
EDGELLM_ONLY = {"tokenizer.ggml.add_bos_token", "{arch}.vocab_size", "{arch}.rope.dimension_count", "{arch}.rope.freq_base",
                "{arch}.attention.sliding_window_pattern"}


def _reference(name: str) -> Path:
    ckpt = CHECKPOINTS[name]()
    if name in REF_ARCHITECTURES:
        ckpt = arch_fixtures.with_architectures(name, ckpt, REF_ARCHITECTURES[name])
    return arch_fixtures.llamacpp_reference_gguf(name, ckpt, REF_OUTTYPE[name], NAMED_PRE.get(name), REF_OPTIONS.get(name, ()))


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
            f"{name}-f32", CHECKPOINTS[name](), "f32", NAMED_PRE.get(name), REF_OPTIONS.get(name, ())), name, ids)
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


@pytest.mark.parametrize("effort", ["low", "high"])
def test_harmony_reasoning_effort_renders_like_transformers(effort, converted, hf_tokenizer):
    rendered = render_stored_template(converted("gptoss"), reasoning_effort=effort)
    assert f"Reasoning: {effort}" in rendered
    assert rendered == hf_tokenizer("gptoss").apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, reasoning_effort=effort)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_identical_to_llamacpp_converter(name, converted):
    ref_meta, ref_tensors = _fields(_reference(name))
    meta, tensors = _fields(converted(name, "auto"))
    arch = read_gguf(converted(name, "auto")).arch
    ours_only = {k.format(arch=arch) for k in EDGELLM_ONLY}
    for key in sorted(set(ref_meta) | set(meta)):
        if key in EXPECTED_DIFFERENT | DIFFERENT_FOR.get(name, set()) or (key in ours_only and key not in ref_meta):
            continue
        if key == "tokenizer.ggml.pre" and name in NAMED_PRE:
            continue
        if key == f"{arch}.context_length" and name in OWN_CONTEXT:
            continue
        assert key in meta and key in ref_meta, key
        assert meta[key] == ref_meta[key], key
    if name in EXP_ROUNDED_ONCE:
        for tname in [t for t in ref_tensors if t.endswith(".ssm_a")]:
            ours, ref = (np.asarray(d.pop(tname).data).view(np.int32).astype(np.int64) for d in (tensors, ref_tensors))
            assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1, tname
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
    q35 = read_gguf(converted("qwen35", "q8_0"))
    assert q35.metadata["qwen35.attention.recurrent_layers"] == [True, True, True, False]
    assert (q35.metadata["qwen35.ssm.conv_kernel"], q35.metadata["qwen35.ssm.state_size"], q35.metadata["qwen35.ssm.group_count"],
            q35.metadata["qwen35.ssm.time_step_rank"], q35.metadata["qwen35.ssm.inner_size"]) == (4, 16, 2, 4, 64)
    assert q35.metadata["qwen35.rope.dimension_count"] == 8  # a quarter of head_dim 32
    types = {t.name: t.ggml_type for t in q35.tensors}
    assert types["blk.0.ssm_conv1d.weight"] == "F32" and types["blk.0.attn_qkv.weight"] == "Q8_0"
    assert "blk.3.attn_q.weight" in types and "blk.3.ssm_a" not in types and "blk.0.attn_q.weight" not in types


def test_gpt_oss_experts_stay_mxfp4(converted):
    """As released, GPT-OSS's experts are MXFP4 in the GGUF whatever the outtype: the same values the plain
    (dequantized) checkpoint converts to, bit for bit; sinks, the window pattern and YaRN reach the file."""
    import gguf

    for outtype, ftype in (("auto", "BF16"), ("f32", "ALL_F32"), ("q8_0", "Q8_0")):
        info = read_gguf(converted("gptoss", outtype))
        assert info.file_type == ftype, outtype
        types = {t.name: t.ggml_type for t in info.tensors}
        assert {types[f"blk.0.ffn_{m}_exps.weight"] for m in ("gate", "up", "down")} == {"MXFP4"}
        assert types["blk.0.ffn_gate_exps.bias"] == types["blk.0.attn_sinks.weight"] == types["blk.0.ffn_gate_inp.weight"] == "F32"
    meta = info.metadata
    assert meta["gpt-oss.attention.sliding_window"] == 16 and meta["gpt-oss.attention.sliding_window_pattern"] == [True, False] * 2
    assert meta["gpt-oss.rope.scaling.type"] == "yarn" and meta["gpt-oss.rope.scaling.factor"] == 32.0
    assert meta["gpt-oss.rope.scaling.original_context_length"] == 4096
    assert (meta["gpt-oss.rope.scaling.yarn_beta_fast"], meta["gpt-oss.rope.scaling.yarn_beta_slow"]) == (32.0, 1.0)
    packed, plain = (_fields(converted(n, "f32"))[1] for n in ("gptoss", "gptoss-plain"))
    assert plain["blk.2.ffn_up_exps.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    for name in ("blk.2.ffn_gate_exps.weight", "blk.2.ffn_up_exps.weight", "blk.2.ffn_down_exps.weight"):
        values = gguf.quants.dequantize(np.asarray(packed[name].data), gguf.GGMLQuantizationType.MXFP4)
        assert np.array_equal(values.reshape(-1), np.asarray(plain[name].data).reshape(-1)), name


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


def _drop_scales(cfg: dict, folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(weights, folder / "model.safetensors")


def _u8_attention(cfg: dict, folder: Path) -> None:
    """A packed (U8) tensor where the converter expects floats."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.weight"] = torch.zeros((64, 64), dtype=torch.uint8)
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
    ("qwen35", lambda c, d: c.update(linear_value_head_dim=32), r"linear_key_head_dim differs from linear_value_head_dim"),
    ("qwen35", lambda c, d: c.update(linear_num_value_heads=3), r"value heads must be a multiple of key heads"),
    ("qwen35", lambda c, d: c.update(layer_types=["sliding_attention"] * 4), r"layer_types must list linear_attention or full_attention"),
    ("qwen35", lambda c, d: c.update(attention_bias=True), r"attention_bias is set"),
    ("qwen35", lambda c, d: c["rope_parameters"].update(rope_type="yarn", factor=4.0), r"rope scaling is set"),
    ("qwen35", lambda c, d: c.update(architectures=["Qwen3_5ForConditionalGeneration"]), r"unsupported architecture Qwen3_5ForConditionalGeneration"),
    ("qwen35moe", lambda c, d: c.update(shared_expert_intermediate_size=0), r"shared_expert_intermediate_size is missing, and llama.cpp needs the shared expert"),
    ("qwen35moe", lambda c, d: c.update(num_experts_per_tok=5), r"num_experts_per_tok"),
    ("qwen35moe", lambda c, d: c.update(linear_num_key_heads=3), r"value heads must be a multiple of key heads"),
    ("qwen3next", lambda c, d: c.update(norm_topk_prob=False), r"norm_topk_prob is off"),
    ("qwen3next", lambda c, d: c.update(mlp_only_layers=[1]), r"some layers are dense"),
    ("qwen3next", lambda c, d: c.update(linear_value_head_dim=32), r"linear_key_head_dim differs"),
    ("gptoss", lambda c, d: c.update(swiglu_limit=10.0), r"swiglu_alpha / swiglu_limit differ"),
    ("gptoss", lambda c, d: c["rope_parameters"].update(beta_fast="32"), r"bad value for the rope's beta_fast: '32'"),
    ("gptoss", lambda c, d: c.update(tie_word_embeddings=True), r"tie_word_embeddings is set"),
    ("gptoss", lambda c, d: c.update(layer_types=["linear_attention"] * 4), r"layer_types must list sliding_attention or full_attention"),
    ("gptoss", lambda c, d: c.update(layer_types=[{"kind": "sliding"}] * 4), r"layer_types must list sliding_attention or full_attention"),
    ("gptoss", lambda c, d: c.pop("quantization_config"), r"lacks tensor model\.layers\.0\.mlp\.experts\.gate_up_proj that"),
    ("gptoss-plain", lambda c, d: c.update(quantization_config={"quant_method": "mxfp4"}), r"lacks tensor .*gate_up_proj_blocks"),
    ("gptoss", _drop_scales, r"lacks tensor model\.layers\.1\.mlp\.experts\.down_proj_scales"),
    ("gptoss", _u8_attention, r"q_proj\.weight is stored as U8, which this converter reads only as MXFP4 experts"),
    ("lfm2", lambda c, d: c.update(conv_bias=True), r"conv_bias is set, and llama.cpp's lfm2 loads no convolution biases"),
    ("lfm2", lambda c, d: c.update(layer_types=["conv", "sliding_attention"] * 3), r"layer_types must list conv or full_attention"),
    ("lfm2", lambda c, d: c.update(conv_L_cache=1), r"conv_L_cache is missing or below 2"),
    ("granite4h", lambda c, d: c.update(position_embedding_type="rope"), r"position_embedding_type is rope"),
    ("granite4h", lambda c, d: c.update(layer_types=["attention"] * 4), r"no layer is a Mamba2 layer"),
    ("granite4h", lambda c, d: c.update(mamba_n_heads=6), r"Mamba2 shape is missing or inconsistent"),
    ("granite4h", lambda c, d: c.update(mamba_proj_bias=True), r"mamba_proj_bias is set"),
    ("granite4h", lambda c, d: c.update(num_experts_per_tok=5), r"num_experts_per_tok are out of range"),
    ("granite4h", lambda c, d: c.update(time_step_limit=[0.001, 0.1]), r"time_step_limit bounds the Mamba2 step size"),
    ("granite4hdense", lambda c, d: c.update(intermediate_size=32), r"intermediate_size differs from shared_intermediate_size"),
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


def _lfm2_first_release_style(cfg: dict, folder: Path) -> None:
    """LFM2's config as its first releases wrote it: attention layers by index, the MLP's width and tied
    embeddings under their early names."""
    cfg["full_attn_idxs"] = [i for i, t in enumerate(cfg.pop("layer_types")) if t == "full_attention"]
    cfg["block_ff_dim"] = cfg.pop("intermediate_size")
    cfg["tie_embedding"] = cfg.pop("tie_word_embeddings")


def test_lfm2_first_release_config_converts_the_same(tmp_path, converted):
    src = _edited(tmp_path, "lfm2", _lfm2_first_release_style)
    out = tmp_path / "first.gguf"
    assert main(["convert", "-q", str(src), "-o", str(out)]) == 0
    meta, tensors = _fields(out)
    ref_meta, ref_tensors = _fields(converted("lfm2", "auto"))
    assert {k: v for k, v in meta.items() if k != "general.name"} == {k: v for k, v in ref_meta.items() if k != "general.name"}
    assert_same_tensors(tensors, ref_tensors)


def test_unknown_architecture_names_itself_and_the_known_ones(tmp_path, capsys):
    from edgellm.quantize.arch import ARCHS

    src = _edited(tmp_path, "lfm2", lambda c, d: c.update(architectures=["Lfm2MoeForCausalLM"]))
    rc = main(["convert", "-q", str(src), "-o", str(tmp_path / "out.gguf")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1, err
    assert err.startswith("edgellm: unsupported architecture Lfm2MoeForCausalLM; supported: ")
    assert {"Lfm2ForCausalLM", "GraniteMoeHybridForCausalLM"} <= set(err.split("supported: ")[1].split(", ")) == set(ARCHS)


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


# --- GPT-OSS end to end ------------------------------------------------------------------------------------


def test_gpt_oss_packages_plans_and_runs(tmp_path, capsys):
    """The tiny GPT-OSS as released: packaged (a bf16 base keeping the MXFP4 experts, the MXFP4_MOE level that keeps
    them too, a Q4_K_M level that requantizes them), planned, and run with its harmony template at low effort."""
    out = tmp_path / "pkg"
    assert main(["package", str(CHECKPOINTS["gptoss"]()), "-o", str(out), "--levels", "MXFP4_MOE,Q4_K_M", "--json"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    files = {f["level"]: out / f["file"] for f in manifest["files"]}
    assert set(files) == {"BF16", "MXFP4_MOE", "Q4_K_M"}
    types = {lv: {t.name: t.ggml_type for t in read_gguf(path).tensors} for lv, path in files.items()}
    assert types["BF16"]["blk.0.ffn_down_exps.weight"] == types["MXFP4_MOE"]["blk.0.ffn_down_exps.weight"] == "MXFP4"
    assert types["BF16"]["blk.0.attn_q.weight"] == "BF16" and types["MXFP4_MOE"]["blk.0.attn_q.weight"] == "Q8_0"
    assert types["Q4_K_M"]["blk.0.ffn_down_exps.weight"] != "MXFP4"
    base, kept = (read_gguf(files[lv]) for lv in ("BF16", "MXFP4_MOE"))
    same = {t.name for t in base.tensors if t.ggml_type == "MXFP4"}
    assert same and all(np.array_equal(_fields(files["BF16"])[1][n].data, _fields(files["MXFP4_MOE"])[1][n].data) for n in same)
    card = (out / "README.md").read_text()
    assert "- MXFP4_MOE: experts kept in MXFP4 as released; the other weights Q8_0" in card
    assert "- Q4_K_M: experts requantized from MXFP4 to Q4_K_M's types" in card
    capsys.readouterr()

    assert main(["plan", str(out), "--ctx", "4096", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["level"] in files and plan["memory"]["kv_cpu"] > 0, plan
    assert main(["run", str(files["MXFP4_MOE"]), "-p", "What is 2+2?", "-n", "12", "--temp", "0", "--no-think", "--json"]) == 0
    captured = capsys.readouterr()
    reply = json.loads(captured.out)
    assert "cannot be switched" not in captured.err and reply["stats"]["gen_tokens"] > 0, captured.err


def test_harmony_markers_reach_the_reply_text(converted):
    """llama.cpp renders harmony's channel markers as text and ends generation at <|return|> and <|call|>, not at
    <|end|> (which only ends the analysis message), so the reply splits into reasoning and answer as streamed."""
    import llama_cpp as L

    from edgellm.engine.launch import plan_model
    from edgellm.engine.reasoning import split_reasoning
    from edgellm.engine.runtime import Engine

    reply = "<|channel|>analysis<|message|>Two and two.<|end|><|start|>assistant<|channel|>final<|message|>Four."
    with Engine.load(plan_model(str(converted("gptoss")), ctx=256)) as engine:
        ids = engine.tokenize(reply, add_bos=False)
        assert len(ids) < len(reply) // 3  # the markers are single tokens
        text = "".join(engine.piece(t).decode() for t in ids)
        vocab = L.llama_model_get_vocab(engine.model)
        eog = {engine.piece(t, special=True).decode() for t in engine.tokenize("<|end|><|return|><|call|>", add_bos=False)
               if L.llama_vocab_is_eog(vocab, t)}
        prompt = engine.render_chat([{"role": "user", "content": "Hi"}], think=False)
    assert text == reply and split_reasoning(text) == ("Two and two.", "Four.")
    assert eog == {"<|return|>", "<|call|>"}
    assert "Reasoning: low" in prompt and prompt.endswith("<|start|>assistant")


def test_gpt_oss_config_as_released(tmp_path, converted):
    """The release's config.json has transformers 4's rope_scaling beside rope_theta: the same file comes out."""

    def edit(cfg: dict, folder: Path) -> None:
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = rope

    out = tmp_path / "out.gguf"
    assert main(["convert", "-q", str(_edited(tmp_path, "gptoss", edit)), "-o", str(out)]) == 0
    (meta, tensors), (ref_meta, ref_tensors) = _fields(out), _fields(converted("gptoss", "auto"))
    assert "gpt-oss.rope.scaling.yarn_beta_fast" in meta
    assert {k: v for k, v in meta.items() if k != "general.name"} == {k: v for k, v in ref_meta.items() if k != "general.name"}
    assert_same_tensors(tensors, ref_tensors)


@pytest.mark.parametrize("name", ["lfm2", "granite4h"])
def test_hybrid_templates_render_through_edgellm_like_transformers(name, converted, hf_tokenizer):
    """The LFM2- and Granite-style templates as stored in the GGUF, through the renderer run/chat/serve use: a
    system message (Granite's default one without), and an earlier reply's thinking (LFM2 drops it)."""
    from edgellm.engine import chat_template

    template = read_gguf(converted(name)).chat_template
    earlier = {"role": "assistant", "content": "<think>\nshort\n</think>\n\nParis."}
    for messages in (MESSAGES, [{"role": "system", "content": "Be brief."}, MESSAGES[0], earlier, *MESSAGES[2:]]):
        expected = hf_tokenizer(name).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert chat_template.render(template, messages) == expected


# --- hybrids end to end ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lfm2", "granite4h"])
def test_hybrid_packages_plan_and_run(name, tmp_path, capsys):
    """convert -> package -> plan -> run for LFM2 and the Granite 4 hybrid with experts: the plan counts the
    recurrent layers' state beside the attention layers' KV cache, and the package's best level (its F32 base)
    answers as transformers does, greedily."""
    from conftest import run_cli

    pkg = tmp_path / name
    code, _, err = run_cli(capsys, "package", str(CHECKPOINTS[name]()), "-o", str(pkg), "--levels", "Q8_0", "--base", "f32")
    assert code == 0, err
    code, out, err = run_cli(capsys, "plan", str(pkg), "--ctx", "4096", "--json")
    assert code == 0, err
    plan = json.loads(out)
    memory = plan["memory"]
    info = read_gguf(plan["path"])
    n_attention = sum(1 for v in info.metadata[f"{info.arch}.attention.head_count_kv"] if v)
    assert 0 < memory["recurrent"] < memory["kv_cpu"]
    assert memory["kv_cpu"] - memory["recurrent"] == n_attention * 4096 * 2 * info.n_head_kv * info.head_dim_k * 2
    assert memory["n_expert"] == (4 if name == "granite4h" else 0)
    code, out, err = run_cli(capsys, "run", str(pkg), "-p", QUESTION, "-n", "12", "--temp", "0", "--repeat-penalty", "1", "--ctx", "4096", "--json")
    assert code == 0, err
    reply = json.loads(out)
    assert reply["engine"]["level"] == "F32" and reply["stats"]["gen_tokens"] == 12
    assert reply["text"] == _transformers_reply(name, 12)

    # speculation would leave rejected guesses in the recurrent state: auto turns it off, a named kind is refused
    code, out, err = run_cli(capsys, "run", str(pkg), "-p", QUESTION, "-n", "4", "--draft", "auto")
    assert code == 0 and "speculation off: llama.cpp cannot take rejected guesses back" in err, err
    code, out, err = run_cli(capsys, "run", str(pkg), "-p", QUESTION, "-n", "4", "--draft", "ngram")
    errors = [line for line in err.splitlines() if not line.startswith("note: ")]  # a busy machine's note may come first
    assert code != 0 and errors == ["edgellm: --draft ngram: llama.cpp cannot take rejected guesses back out of this model's recurrent state"], err
    from edgellm.engine.draft import serving_speculation
    from edgellm.engine.launch import plan_model
    from edgellm.errors import UsageError

    target = plan_model(pkg, ctx=4096)
    spec, notes = serving_speculation(target, "auto")  # a server's slots neither
    assert spec is None and notes[0].startswith("speculation off")
    with pytest.raises(UsageError, match="recurrent state"):
        serving_speculation(target, "ngram")


QUESTION = "Tell me about dragons."


def _transformers_reply(name: str, n: int) -> str:
    """transformers' greedy reply to QUESTION through the checkpoint's chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(CHECKPOINTS[name]())
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINTS[name](), dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
