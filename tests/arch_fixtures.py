"""Tiny random checkpoints of the architectures beyond the Llama family, each with a tokenizer of its real
style trained here: Qwen3 and Qwen3-MoE (Qwen2's byte-level BPE), Gemma 2, 3 and 4 (SentencePiece BPE
without a dummy prefix, turn markers; Gemma 4 also inside its multimodal class), Phi-3 (Llama's SentencePiece plus `<|...|>` special tokens, long-context rope)
Mixtral (Mistral's tokenizer, reused), SmolLM3 (Llama without rope in every fourth layer), LFM2 (short
convolutions) and Granite 4 hybrids (Mamba2 layers), the last three with Qwen's tokenizer reused. Built with transformers' own config classes, cached like
fixtures.py's builders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fixtures import CHATML_TEMPLATE, QWEN2_SPLIT_REGEX, _build_once, _save_random_model, mistral_checkpoint, training_text

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Qwen3's template, cut to what the tests render: ChatML with an empty thinking block before a new reply.
QWEN3_TEMPLATE = CHATML_TEMPLATE.replace(
    "{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}"
)
# LFM2's style: ChatML, a system message first, and past replies' thinking left out (only the last reply's kept).
LFM2_TEMPLATE = (
    "{%- set ns = namespace(last=-1) -%}{%- for m in messages -%}{%- if m['role'] == 'assistant' -%}{%- set ns.last = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}{%- for m in messages -%}{%- set content = m['content'] -%}"
    "{%- if m['role'] == 'assistant' and loop.index0 != ns.last and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1] | trim -%}{%- endif -%}"
    "{{- '<|im_start|>' + m['role'] + '\n' + content + '<|im_end|>\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# Granite 4's style: role markers, and a default system message where the conversation has none.
GRANITE4_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = 'You are a helpful assistant. Please ensure responses are professional, accurate, and safe.' %}{%- endif %}"
    "{{- '<|start_of_role|>system<|end_of_role|>' + system + '<|end_of_text|>\n' }}"
    "{%- for m in messages %}{{- '<|start_of_role|>' + m['role'] + '<|end_of_role|>' + m['content'] + '<|end_of_text|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)

SPM_COMMON = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    remove_extra_whitespaces=False,
    normalization_rule_name="identity",
    character_coverage=0.9995,
    minloglevel=2,
)


def _train_spm(folder: Path, vocab_size: int, **options) -> Path:
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text(training_text())
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, **SPM_COMMON, **options)
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    return folder / "tokenizer.model"


def _write_tokenizer_config(folder: Path, **fields) -> None:
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    cfg.update(fields)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def _added(content: str, special: bool = True, rstrip: bool = False) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": rstrip, "single_word": False, "special": special}


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def gemma_tokenizer_dir() -> Path:
    """Gemma's tokenizer style: SentencePiece BPE with byte fallback and no dummy prefix, <pad> <eos> <bos>
    <unk> at 0-3, turn markers as special added tokens; tokenizer.model beside the tokenizer.json that
    transformers makes from it (as Google's repos ship both)."""
    return _build_once("gemma-tokenizer", lambda tmp: write_gemma_tokenizer(tmp, GEMMA_SPECIALS))


def write_gemma_tokenizer(tmp: Path, specials: list[str]) -> None:
    """Gemma's tokenizer style (see gemma_tokenizer_dir) with `specials` at ids 0.. in that order."""
    from transformers import AutoTokenizer

    _train_spm(
        tmp, 1000, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=specials[4:],
    )
    _write_tokenizer_config(tmp, tokenizer_class="GemmaTokenizer")
    AutoTokenizer.from_pretrained(tmp).save_pretrained(tmp)
    tok_json = json.loads((tmp / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<bos>", "type_id": 0}}  # Gemma's tokenizer.json adds <bos> itself
    tok_json["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
    }
    (tmp / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    _write_tokenizer_config(
        tmp,
        add_bos_token=True,
        add_eos_token=False,
        chat_template=GEMMA_TEMPLATE,
        added_tokens_decoder={str(i): _added(t) for i, t in enumerate(specials)},
    )


def phi3_tokenizer_dir() -> Path:
    """Phi-3's tokenizer style: Llama 2's SentencePiece (dummy prefix, byte fallback) plus special `<|...|>`
    tokens after the SentencePiece pieces, no BOS added."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        _train_spm(tmp, 800, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
        _write_tokenizer_config(tmp, tokenizer_class="LlamaTokenizer", legacy=True, add_bos_token=False)
        tok = AutoTokenizer.from_pretrained(tmp)
        from tokenizers import AddedToken

        # As in Microsoft's files, the turn markers swallow the whitespace after them (llama.cpp does the same
        # for models whose name says Phi-3).
        specials = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
        stripped = {t: t != "<|endoftext|>" for t in specials}
        tok.add_special_tokens(
            {"additional_special_tokens": [AddedToken(t, rstrip=stripped[t], normalized=False, special=True) for t in specials]}
        )
        tok.eos_token = "<|endoftext|>"
        tok.pad_token = "<|endoftext|>"
        tok.chat_template = PHI3_TEMPLATE
        tok.save_pretrained(tmp)
        first = 800
        _write_tokenizer_config(
            tmp,
            add_bos_token=False,
            add_eos_token=False,
            added_tokens_decoder={
                "0": _added("<unk>"), "1": _added("<s>"), "2": _added("</s>"),
                **{str(first + i): _added(t, rstrip=stripped[t]) for i, t in enumerate(specials)},
            },
        )

    return _build_once("phi3-tokenizer", build)


def qwen3_tokenizer_dir() -> Path:
    """Qwen's tokenizer style (byte-level BPE, Qwen2's split regex, NFC) with Qwen3's special tokens."""

    def build(tmp: Path) -> None:
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

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
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tok.add_tokens(["<think>", "</think>"])  # Qwen3 adds these as non-special tokens
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None
        )
        fast.chat_template = QWEN3_TEMPLATE
        fast.save_pretrained(tmp)

    return _build_once("qwen3-tokenizer", build)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
            shutil.copy(f, dst / f.name)


def qwen3_checkpoint() -> Path:
    """A tiny Qwen3 (bf16, q/k norms, head_dim wider than hidden/heads, tied embeddings)."""

    def build(tmp: Path) -> None:
        from transformers import Qwen3Config

        _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
        config = Qwen3Config(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=40960,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            eos_token_id=1002,
            architectures=["Qwen3ForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("qwen3-tiny-hf", build)


def qwen3_moe_checkpoint() -> Path:
    """A tiny Qwen3-MoE (f32, 8 experts of which 2 route each token, renormalised) with a transformers-4
    style config (num_experts, rope_theta at the top level)."""

    def build(tmp: Path) -> None:
        from transformers import Qwen3MoeConfig

        _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
        config = Qwen3MoeConfig(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=192,
            moe_intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            max_position_embeddings=40960,
            tie_word_embeddings=False,
            eos_token_id=1002,
            architectures=["Qwen3MoeForCausalLM"],
        )
        _save_random_model(tmp, config, "float32")
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["num_experts"] = cfg.pop("num_local_experts")
        cfg["rope_theta"] = (cfg.pop("rope_parameters", None) or {}).get("rope_theta", 1000000.0)
        cfg["torch_dtype"] = cfg.pop("dtype", "float32")
        cfg["transformers_version"] = "4.51.0"
        cfg_path.write_text(json.dumps(cfg, indent=2))

    return _build_once("qwen3moe-tiny-hf", build)


def gemma2_checkpoint() -> Path:
    """A tiny Gemma 2 (bf16, transformers-4 style config): alternating 16-token sliding window and global
    layers, attention and final logit soft-capping, norms stored as w - 1."""

    def build(tmp: Path) -> None:
        from transformers import Gemma2Config

        _copy_tokenizer(gemma_tokenizer_dir(), tmp)
        config = Gemma2Config(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=16,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            max_position_embeddings=8192,
            pad_token_id=0,
            eos_token_id=[1, 6],
            bos_token_id=2,
            architectures=["Gemma2ForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("layer_types", None)  # older configs know the pattern only from the architecture
        cfg["rope_theta"] = (cfg.pop("rope_parameters", None) or {}).get("rope_theta", 10000.0)
        cfg["torch_dtype"] = cfg.pop("dtype", "bfloat16")
        cfg["transformers_version"] = "4.42.0"
        cfg_path.write_text(json.dumps(cfg, indent=2))

    return _build_once("gemma2-tiny-hf", build)


def gemma3_checkpoint() -> Path:
    """A tiny Gemma 3 text model (bf16, transformers-5 config without `architectures`, model_type
    gemma3_text): 5 sliding-window layers (16 tokens, local rope base 10000) to 1 global one (rope base 1e6
    with linear scaling), q/k norms, a vocabulary wider than the tokenizer."""

    def build(tmp: Path) -> None:
        from transformers import Gemma3TextConfig

        _copy_tokenizer(gemma_tokenizer_dir(), tmp)
        config = Gemma3TextConfig(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=7,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=16,
            max_position_embeddings=32768,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            pad_token_id=0,
            eos_token_id=[1, 6],
            bos_token_id=2,
        )
        _save_random_model(tmp, config, "bfloat16")
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("architectures", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))

    return _build_once("gemma3-tiny-hf", build)


def gemma4_checkpoint() -> Path:
    """A tiny Gemma 4 text model (Gemma4ForCausalLM, bf16): 5 sliding-window layers (16 tokens, head_dim 16,
    rope base 10000) to 1 global one (head_dim 32, proportional rope over a quarter of it, base 1e6), q/k/v
    norms, a scalar per layer, no per-layer embeddings, experts or shared KV; the Gemma tokenizer fixture (as many rows as tokens)."""

    def build(tmp: Path) -> None:
        from transformers import Gemma4TextConfig

        _copy_tokenizer(gemma_tokenizer_dir(), tmp)
        config = Gemma4TextConfig(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            global_head_dim=32,
            sliding_window=16,
            max_position_embeddings=32768,
            hidden_size_per_layer_input=0,
            final_logit_softcapping=30.0,
            pad_token_id=0,
            eos_token_id=[1, 6],
            bos_token_id=2,
            architectures=["Gemma4ForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("gemma4-tiny-hf", build)


def gemma4_multimodal_checkpoint() -> Path:
    """The Gemma 4 text model above inside Gemma4ForConditionalGeneration (bf16): text settings under
    text_config as Google's configs give them (global_head_dim, no per_layer_config), keys doubling as values
    in the global layer (one KV head there, no v_proj), its tensors under model.language_model, and a tiny
    vision tower beside them."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig

        text = json.loads((gemma4_checkpoint() / "config.json").read_text())
        for key in ("architectures", "dtype", "transformers_version", "model_type", "per_layer_config"):
            text.pop(key, None)
        text.update(global_head_dim=32, attention_k_eq_v=True, num_global_key_value_heads=1)
        _copy_tokenizer(gemma_tokenizer_dir(), tmp)
        vision = Gemma4VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            head_dim=16, position_embedding_size=64,
        )
        config = Gemma4Config(
            text_config=Gemma4TextConfig(**text), vision_config=vision, audio_config=None, image_token_id=7, video_token_id=8,
            audio_token_id=9, boi_token_id=None, eoi_token_id=None, boa_token_id=None, eoa_token_index=None,
            architectures=["Gemma4ForConditionalGeneration"],
        )
        torch.manual_seed(0)
        model = Gemma4ForConditionalGeneration(config)
        with torch.no_grad():  # as _save_random_model does: norms near 1, larger weights than the default init
            for p in model.parameters():
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.1 * torch.randn_like(p))
        model.to(torch.bfloat16).save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["text_config"].pop("per_layer_config")
        cfg["text_config"].update(global_head_dim=32, num_global_key_value_heads=1)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))

    return _build_once("gemma4-multimodal-tiny-hf", build)


def phi3_checkpoint() -> Path:
    """A tiny Phi-3.5 / Phi-4-mini style model (f16): fused qkv and gate_up, long-context rope (longrope
    factors, 4k -> 128k), a partial rotary factor, embedding rows beyond the tokenizer."""

    def build(tmp: Path) -> None:
        from transformers import Phi3Config

        _copy_tokenizer(phi3_tokenizer_dir(), tmp)
        head_dim, partial = 16, 0.75
        n_freq = int(head_dim * partial) // 2
        config = Phi3Config(
            vocab_size=832,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=131072,
            original_max_position_embeddings=4096,
            partial_rotary_factor=partial,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": partial,
                "original_max_position_embeddings": 4096,
                "short_factor": [1.0 + 0.05 * i for i in range(n_freq)],
                "long_factor": [1.0 + 0.5 * i for i in range(n_freq)],
            },
            sliding_window=262144,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=800,
            pad_token_id=800,
            architectures=["Phi3ForCausalLM"],
        )
        _save_random_model(tmp, config, "float16")

    return _build_once("phi3-tiny-hf", build)


def mixtral_checkpoint() -> Path:
    """A tiny Mixtral (bf16, 4 experts, 2 per token) with the Mistral fixture's SentencePiece tokenizer."""

    def build(tmp: Path) -> None:
        from transformers import MixtralConfig

        _copy_tokenizer(mistral_checkpoint(), tmp)
        config = MixtralConfig(
            vocab_size=800,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=32768,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            architectures=["MixtralForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("mixtral-tiny-hf", build)


def smollm3_checkpoint() -> Path:
    """A tiny SmolLM3 (bf16, tied embeddings): Llama with rope left out of every fourth layer (layers 3 and
    7 of 8), with the Qwen-style byte-level BPE tokenizer trained here."""

    def build(tmp: Path) -> None:
        from transformers import SmolLM3Config

        _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
        config = SmolLM3Config(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=65536,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0},
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=1002,
            pad_token_id=1000,
        )
        assert config.no_rope_layers == [1, 1, 1, 0, 1, 1, 1, 0]
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("smollm3-tiny-hf", build)


def _qwen35_layers() -> dict:
    """The tiny Qwen3.5-family shape: three gated delta net layers per full-attention one, twice as many
    linear-attention value heads as key heads, a quarter of each attention head rotated."""
    return dict(
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32, linear_conv_kernel_dim=4,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        max_position_embeddings=40960, tie_word_embeddings=False, eos_token_id=1002,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.25},
    )


QWEN35_EXPERTS = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)


def qwen35_checkpoint() -> Path:
    """A tiny Qwen3.5 text model (bf16, as released): three gated delta net layers, then one full-attention layer with a
    gated query and a quarter of each head rotated; twice as many linear-attention value heads as key heads."""

    def build(tmp: Path) -> None:
        from transformers import Qwen3_5TextConfig

        _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
        config = Qwen3_5TextConfig(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=160,
            **_qwen35_layers(),
            architectures=["Qwen3_5ForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("qwen35-tiny-hf", build)


def qwen35_moe_checkpoint() -> Path:
    """A tiny Qwen3.5-MoE text model (bf16): the Qwen3.5 fixture's layers with 4 experts (2 used) and a gated
    shared expert in place of the MLP."""

    def build(tmp: Path) -> None:
        from transformers import Qwen3_5MoeTextConfig

        _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
        config = Qwen3_5MoeTextConfig(
            vocab_size=1024,
            hidden_size=64,
            **_qwen35_layers(),
            **QWEN35_EXPERTS,
            architectures=["Qwen3_5MoeForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("qwen35moe-tiny-hf", build)


def qwen3_next_checkpoint() -> Path:
    """A tiny Qwen3-Next (bf16): gated delta net layers whose q, k, v and gate projections are one matrix
    (per key head), a full-attention layer every fourth, 4 experts (2 used) and a gated shared expert."""

    def build(tmp: Path) -> None:
        from transformers import Qwen3NextConfig

        _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
        config = Qwen3NextConfig(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=96,
            **_qwen35_layers(),
            **QWEN35_EXPERTS,
            norm_topk_prob=True,
            architectures=["Qwen3NextForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("qwen3next-tiny-hf", build)


# GPT-OSS's o200k_harmony special tokens at the ids the release gives them, relative to the first
HARMONY_SPECIALS = {
    "<|startoftext|>": 0, "<|endoftext|>": 1, "<|return|>": 4, "<|constrain|>": 5, "<|channel|>": 7, "<|start|>": 8, "<|end|>": 9,
    "<|message|>": 10, "<|call|>": 14,
}
GPT_OSS_TEMPLATE = Path(__file__).with_name("gpt_oss_chat_template.jinja")  # the chat template the release ships


def gpt_oss_tokenizer_dir() -> Path:
    """GPT-OSS's tokenizer style: byte-level BPE with GPT-4o's split, the harmony special tokens (reserved ones
    filling the gaps, as in the release) and the released chat template."""

    def build(tmp: Path) -> None:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, trainers
        from tokenizers import models as tok_models
        from transformers import PreTrainedTokenizerFast

        from edgellm.quantize.vocab import O200K_SPLIT

        tok = Tokenizer(tok_models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(O200K_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator([training_text()], trainer)
        first = tok.get_vocab_size()
        by_offset = {v: k for k, v in HARMONY_SPECIALS.items()}
        names = [by_offset.get(i, f"<|reserved_{first + i}|>") for i in range(max(by_offset) + 1)]
        tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|return|>", pad_token="<|endoftext|>", unk_token=None
        )
        fast.chat_template = GPT_OSS_TEMPLATE.read_text()
        fast.save_pretrained(tmp)

    return _build_once("gpt-oss-tokenizer", build)


FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # MXFP4's magnitudes; code 8 + i is -FP4_VALUES[i]


def mxfp4_pack(weights):
    """(..., out, in) float32 -> the release's MXFP4 tensors: blocks (..., out, in / 32, 16) holding value 2i in
    byte i's low nibble and 2i + 1 in its high one, and scales (..., out, in / 32) as E8M0 exponents (127 = 1)."""
    import numpy as np

    values = weights.reshape(*weights.shape[:-1], -1, 32).astype(np.float32)
    peak = np.abs(values).max(axis=-1, keepdims=True)
    exponent = np.where(peak > 0, np.floor(np.log2(np.maximum(peak, 1e-30))) - 2, -127).clip(-127, 127)  # 6 = 1.5 * 2**2
    scaled = values / np.exp2(exponent)
    magnitudes = np.asarray(FP4_VALUES, dtype=np.float32)
    codes = np.abs(np.abs(scaled)[..., None] - magnitudes).argmin(-1).astype(np.uint8)
    codes |= np.where((scaled < 0) & (codes > 0), 8, 0).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponent[..., 0] + 127).astype(np.uint8)


def mxfp4_unpack(blocks, scales):
    """The values MXFP4 blocks and scales stand for (..., out, in), as float32."""
    import numpy as np

    table = np.asarray(FP4_VALUES + tuple(-v for v in FP4_VALUES), dtype=np.float32)
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = table[codes] * np.exp2(scales.astype(np.float32) - 127)[..., None]
    return values.reshape(*values.shape[:-2], -1)


def _gpt_oss_base() -> Path:
    """The tiny GPT-OSS as transformers saves it (bf16, plain experts)."""

    def build(tmp: Path) -> None:
        from transformers import GptOssConfig

        _copy_tokenizer(gpt_oss_tokenizer_dir(), tmp)
        first = json.loads((tmp / "tokenizer.json").read_text())["added_tokens"][0]["id"]
        config = GptOssConfig(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=16,
            max_position_embeddings=131072,
            tie_word_embeddings=False,
            bos_token_id=first + HARMONY_SPECIALS["<|startoftext|>"],
            eos_token_id=first + HARMONY_SPECIALS["<|return|>"],
            pad_token_id=first + HARMONY_SPECIALS["<|endoftext|>"],
            architectures=["GptOssForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("gpt-oss-base-hf", build)


def _gpt_oss_variant(name: str, mxfp4: bool) -> Path:
    """The base fixture with its experts rounded to MXFP4: stored as MXFP4 blocks and scales with the
    release's quantization_config (`mxfp4`), or dequantized to plain bf16 (the same values)."""

    def build(tmp: Path) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        src = _gpt_oss_base()
        for f in src.iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, tmp / f.name)
        tensors = load_file(src / "model.safetensors")
        out = {}
        for name_, t in tensors.items():
            if not name_.endswith(("experts.gate_up_proj", "experts.down_proj")):
                out[name_] = t
                continue
            # stored (in, out) per expert; MXFP4 packs each output row's inputs
            rows = t.float().transpose(1, 2).contiguous().numpy()
            blocks, scales = mxfp4_pack(rows)
            if mxfp4:
                out[name_ + "_blocks"], out[name_ + "_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
            else:
                out[name_] = torch.from_numpy(mxfp4_unpack(blocks, scales)).transpose(1, 2).contiguous().to(torch.bfloat16)
        save_file(out, tmp / "model.safetensors", metadata={"format": "pt"})
        if mxfp4:
            cfg = json.loads((tmp / "config.json").read_text())
            cfg["quantization_config"] = {
                "quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
            }
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2))

    return _build_once(name, build)


def gpt_oss_checkpoint() -> Path:
    """A tiny GPT-OSS as released: bf16 with MXFP4 experts (4, 2 per token), attention sinks, a 16-token sliding
    window in every other layer, YaRN rope (transformers' defaults for GPT-OSS), the harmony chat format."""
    return _gpt_oss_variant("gpt-oss-tiny-hf", mxfp4=True)


def gpt_oss_dequantized_checkpoint() -> Path:
    """The same model with its experts dequantized to bf16 (the values MXFP4 stands for), stored plain."""
    return _gpt_oss_variant("gpt-oss-dequantized-tiny-hf", mxfp4=False)


def lfm2_checkpoint() -> Path:
    """A tiny LFM2 (bf16, tied embeddings): short gated convolutions (a 3-token cache) in four of six layers and
    attention with q/k norms in layers 2 and 5; the MLP width derived from intermediate_size as LFM2 does
    (two thirds, rounded up to block_multiple_of). Qwen's tokenizer reused, with a chat template in LFM2's style."""

    def build(tmp: Path) -> None:
        from transformers import Lfm2Config

        _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
        (tmp / "chat_template.jinja").write_text(LFM2_TEMPLATE)
        config = Lfm2Config(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=240,
            block_multiple_of=32,
            block_auto_adjust_ff_dim=True,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            conv_L_cache=3,
            full_attn_idxs=[2, 5],
            max_position_embeddings=128000,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=1002,
            pad_token_id=1000,
            architectures=["Lfm2ForCausalLM"],
        )
        _save_random_model(tmp, config, "bfloat16")

    return _build_once("lfm2-tiny-hf", build)


def _granite_hybrid(tmp: Path, n_expert: int) -> None:
    """Granite 4's hybrid shape: Mamba2 layers with attention (no rope) in layers 1 and 3, Granite's scaling
    multipliers; config.json names the layer types as IBM's releases do (mamba / attention). Qwen's tokenizer
    reused, with a chat template in Granite's style."""
    from transformers import GraniteMoeHybridConfig

    _copy_tokenizer(qwen3_tokenizer_dir(), tmp)
    (tmp / "chat_template.jinja").write_text(GRANITE4_TEMPLATE)
    types = ["mamba", "attention", "mamba", "attention"]
    config = GraniteMoeHybridConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=32 if n_expert else 96,  # llama.cpp sizes a dense model's MLP by it
        shared_intermediate_size=96,
        num_local_experts=n_expert,
        num_experts_per_tok=2 if n_expert else 0,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=types,
        mamba_n_heads=8,
        mamba_n_groups=1,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=16,
        position_embedding_type="nope",
        embedding_multiplier=12.0,
        attention_multiplier=0.0625,
        residual_multiplier=0.22,
        logits_scaling=4.0,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=1002,
        pad_token_id=1000,
        architectures=["GraniteMoeHybridForCausalLM"],
    )
    _save_random_model(tmp, config, "bfloat16")
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["layer_types"] = types
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))


def granite4h_checkpoint() -> Path:
    """A tiny Granite 4 hybrid with experts (bf16): 4 experts (2 used) beside a shared MLP in every layer."""
    return _build_once("granite4h-tiny-hf", lambda tmp: _granite_hybrid(tmp, 4))


def granite4h_dense_checkpoint() -> Path:
    """A tiny dense Granite 4 hybrid (bf16), as granite-4.0-h-micro: the shared MLP alone, no experts."""
    return _build_once("granite4hdense-tiny-hf", lambda tmp: _granite_hybrid(tmp, 0))


CHECKPOINTS = {
    "qwen3": qwen3_checkpoint,
    "qwen3moe": qwen3_moe_checkpoint,
    "gemma2": gemma2_checkpoint,
    "gemma3": gemma3_checkpoint,
    "gemma4": gemma4_checkpoint,
    "gemma4mm": gemma4_multimodal_checkpoint,
    "phi3": phi3_checkpoint,
    "mixtral": mixtral_checkpoint,
    "smollm3": smollm3_checkpoint,
    "qwen35": qwen35_checkpoint,
    "qwen35moe": qwen35_moe_checkpoint,
    "qwen3next": qwen3_next_checkpoint,
    "gptoss": gpt_oss_checkpoint,
    "gptoss-plain": gpt_oss_dequantized_checkpoint,
    "lfm2": lfm2_checkpoint,
    "granite4h": granite4h_checkpoint,
    "granite4hdense": granite4h_dense_checkpoint,
}


# llama.cpp's converter knows byte-level BPE tokenizers only by a hash of their output, and refuses the ones
# trained here. Its tensors do not depend on the tokenizer, so for a tensor comparison it runs with the
# pre-tokenizer named instead of guessed.
_NAMED_PRE = """
import runpy, sys
script, pre = sys.argv[1], sys.argv[2]
sys.path[:0] = [str(__import__("pathlib").Path(script).parent), str(__import__("pathlib").Path(script).parent / "gguf-py")]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def llamacpp_reference_gguf(name: str, src: Path, outtype: str, pre: str | None = None, extra: tuple[str, ...] = ()) -> Path:
    """`src` converted by llama.cpp's own converter (cached under `name`); `pre` names the BPE pre-tokenizer,
    `extra` adds options."""
    import os
    import subprocess
    import sys

    from fixtures import llamacpp_converter

    script = llamacpp_converter()

    def build(tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
        args = [str(src), "--outtype", outtype, "--outfile", str(tmp / "ref.gguf"), *extra]
        cmd = [sys.executable, "-c", _NAMED_PRE, str(script), pre, *args] if pre else [sys.executable, str(script), *args]
        subprocess.run(cmd, check=True, env=env, capture_output=True)

    return _build_once(f"llamacpp-ref-{name}-{outtype}", build) / "ref.gguf"


def with_architectures(name: str, src: Path, arch: str) -> Path:
    """A copy of `src` whose config.json lists `arch` (llama.cpp's converter needs `architectures`)."""

    def build(tmp: Path) -> None:
        for f in src.iterdir():
            shutil.copy(f, tmp / f.name)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["architectures"] = [arch]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))

    return _build_once(f"{name}-with-architectures", build)



def tokenizer_json_only(name: str, src: Path) -> Path:
    """A copy of checkpoint `src` whose tokenizer is saved again by transformers 5 and left without
    tokenizer.model, as transformers 5, fine-tunes and re-uploads ship SentencePiece models."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        for f in src.iterdir():
            if not (f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")):
                shutil.copy(f, tmp / f.name)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        (tmp / "tokenizer.model").unlink(missing_ok=True)

    return _build_once(f"{name}-tokenizer-json-only", build)

# --- real-shaped GGUFs with no weights (memory planning against llama.cpp's own accounting) ---------------

# name -> (arch, n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, sliding window, experts, experts used, expert n_ff)
SHAPES = {
    "gemma3-4b": ("gemma3", 34, 2560, 10240, 8, 4, 256, 262144, 1024, 0, 0, 0),
    "gemma2-2b": ("gemma2", 26, 2304, 9216, 8, 4, 256, 256000, 4096, 0, 0, 0),
    "qwen3-30b-a3b": ("qwen3moe", 48, 2048, 6144, 32, 4, 128, 151936, 0, 128, 8, 768),
    "mixtral-8x7b": ("llama", 32, 4096, 14336, 32, 8, 128, 32000, 0, 8, 2, 14336),
    "qwen3.5-9b": ("qwen35", 32, 4096, 12288, 16, 4, 256, 248320, 0, 0, 0, 0),
    "qwen3.5-35b-a3b": ("qwen35moe", 40, 2048, 512, 16, 2, 256, 248320, 0, 256, 8, 512),  # n_ff: the shared expert's
    "qwen3-next-80b-a3b": ("qwen3next", 48, 2048, 512, 16, 2, 256, 151936, 0, 512, 10, 512),
    "gpt-oss-20b": ("gpt-oss", 24, 2880, 2880, 64, 8, 64, 201088, 128, 32, 4, 2880),
    "lfm2-1.2b": ("lfm2", 16, 2048, 8192, 32, 8, 64, 65536, 0, 0, 0, 0),
    "granite-4.0-h-tiny": ("granitehybrid", 40, 1536, 512, 12, 4, 128, 100352, 0, 64, 6, 512),  # n_ff: an expert's
    "granite-4.0-h-micro": ("granitehybrid", 40, 2048, 8192, 32, 8, 64, 100352, 0, 0, 0, 0),
    "lfm2-350m": ("lfm2", 16, 1024, 4608, 16, 8, 64, 65536, 0, 0, 0, 0),
    "granite-4.0-h-350m": ("granitehybrid", 32, 768, 2048, 12, 4, 64, 100352, 0, 0, 0, 0),
}
# Hybrids whose recurrent layers are short convolutions (LFM2) or Mamba2 (Granite 4): their attention layers, and
# the conv cache (LFM2) or Mamba2's heads, head width, state size, groups and conv kernel and the shared MLP's width.
CONV_HYBRIDS = {"lfm2-1.2b": ((2, 5, 8, 10, 12, 14), 3), "lfm2-350m": ((2, 5, 8, 10, 12, 14), 3)}
MAMBA_HYBRIDS = {"granite-4.0-h-tiny": ((5, 15, 25, 35), (48, 64, 128, 1, 4), 1024),
                 "granite-4.0-h-micro": ((9, 19, 29, 39), (64, 64, 128, 1, 4), 8192),
                 "granite-4.0-h-350m": ((10, 13, 17, 27), (48, 32, 128, 1, 4), 2048)}
# Hybrid shapes' linear-attention layers: key heads, value heads, head width, conv kernel (every 4th layer attends)
LINEAR_SHAPES = {"qwen35": (16, 32, 128, 4), "qwen35moe": (16, 32, 128, 4), "qwen3next": (16, 32, 128, 4)}


def _hybrid_layer_tensors(arch: str, il: int, n_embd: int, n_ff: int, q: int, kv: int, head_dim: int, n_expert: int, n_ff_exp: int):
    """Qwen3.5's layers: gated delta net ones, and every fourth a full-attention one with a gated query; the
    MoE model has experts and a shared one of width n_ff."""
    n_k, n_v, head, conv = LINEAR_SHAPES[arch]
    qk, v = 2 * n_k * head, n_v * head
    out = [("attn_norm", (n_embd,), "norm"), ("post_attention_norm", (n_embd,), "norm")]
    if (il + 1) % 4:
        out += [("attn_qkv", (qk + v, n_embd), "main"), ("attn_gate", (v, n_embd), "main"), ("ssm_conv1d", (qk + v, conv), "norm"),
                ("ssm_dt", (n_v,), "bias"), ("ssm_a", (n_v,), "bare"), ("ssm_norm", (head,), "norm"), ("ssm_out", (n_embd, v), "sensitive")]
        # Qwen3-Next keeps beta and alpha in one matrix
        out += [("ssm_ba", (2 * n_v, n_embd), "main")] if arch == "qwen3next" else [("ssm_beta", (n_v, n_embd), "norm"), ("ssm_alpha", (n_v, n_embd), "norm")]
    else:
        out += [("attn_q", (2 * q, n_embd), "main"), ("attn_k", (kv, n_embd), "main"), ("attn_v", (kv, n_embd), "sensitive"),
                ("attn_output", (n_embd, q), "main"), ("attn_q_norm", (head_dim,), "norm"), ("attn_k_norm", (head_dim,), "norm")]
    suffix = "_shexp" if n_expert else ""
    if n_expert:
        out += [("ffn_gate_inp", (n_expert, n_embd), "norm"), ("ffn_gate_exps", (n_expert, n_ff_exp, n_embd), "main"),
                ("ffn_up_exps", (n_expert, n_ff_exp, n_embd), "main"), ("ffn_down_exps", (n_expert, n_embd, n_ff_exp), "sensitive"),
                ("ffn_gate_inp_shexp", (1, n_embd), "norm")]
    return out + [(f"ffn_gate{suffix}", (n_ff, n_embd), "main"), (f"ffn_up{suffix}", (n_ff, n_embd), "main"),
                  (f"ffn_down{suffix}", (n_embd, n_ff), "sensitive")]


def _conv_mamba_layer_tensors(shape: str, il: int, n_embd: int, n_ff: int, q: int, kv: int, head_dim: int, n_expert: int, n_ff_exp: int):
    """LFM2's and Granite 4's layers: a short convolution or Mamba2 mixer, or attention (LFM2's with q/k norms);
    then LFM2's MLP, Granite's shared MLP and its experts."""
    attention, conv = (CONV_HYBRIDS.get(shape) or MAMBA_HYBRIDS[shape])[:2]
    out = [("attn_norm", (n_embd,), "norm"), ("ffn_norm", (n_embd,), "norm")]
    if il in attention:
        out += [("attn_q", (q, n_embd), "main"), ("attn_k", (kv, n_embd), "main"), ("attn_v", (kv, n_embd), "sensitive"),
                ("attn_output", (n_embd, q), "main")]
        if shape in CONV_HYBRIDS:
            out += [("attn_q_norm", (head_dim,), "norm"), ("attn_k_norm", (head_dim,), "norm")]
    elif shape in CONV_HYBRIDS:
        out += [("shortconv.in_proj", (3 * n_embd, n_embd), "main"), ("shortconv.conv", (n_embd, conv), "norm"),
                ("shortconv.out_proj", (n_embd, n_embd), "main")]
    else:
        n_heads, d_head, d_state, n_groups, d_conv = conv
        inner = n_heads * d_head
        xbc = inner + 2 * n_groups * d_state
        out += [("ssm_in", (inner + xbc + n_heads, n_embd), "main"), ("ssm_conv1d", (xbc, d_conv), "norm"), ("ssm_conv1d", (xbc,), "bias"),
                ("ssm_dt", (n_heads,), "bias"), ("ssm_a", (n_heads, 1), "bare"), ("ssm_d", (n_heads, 1), "bare"),
                ("ssm_norm", (n_groups, inner // n_groups), "norm"), ("ssm_out", (n_embd, inner), "sensitive")]
    if shape in CONV_HYBRIDS:
        return out + [("ffn_gate", (n_ff, n_embd), "main"), ("ffn_up", (n_ff, n_embd), "main"), ("ffn_down", (n_embd, n_ff), "sensitive")]
    shared = MAMBA_HYBRIDS[shape][2]
    suffix = "_shexp" if n_expert else ""
    if n_expert:
        out += [("ffn_gate_inp", (n_expert, n_embd), "norm"), ("ffn_gate_exps", (n_expert, n_ff_exp, n_embd), "main"),
                ("ffn_up_exps", (n_expert, n_ff_exp, n_embd), "main"), ("ffn_down_exps", (n_expert, n_embd, n_ff_exp), "sensitive")]
    return out + [(f"ffn_gate{suffix}", (shared, n_embd), "main"), (f"ffn_up{suffix}", (shared, n_embd), "main"),
                  (f"ffn_down{suffix}", (n_embd, shared), "sensitive")]


def _layer_tensors(arch: str, il: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int, head_dim: int, n_expert: int, n_ff_exp: int):
    """(name suffix, HF-order shape, role) of one layer; role picks the quant type."""
    q, kv = n_head * head_dim, n_head_kv * head_dim
    if arch == "gpt-oss":  # biases everywhere, a sink per head, experts in MXFP4 as released
        return [("attn_norm", (n_embd,), "norm"), ("post_attention_norm", (n_embd,), "norm"), ("attn_sinks", (n_head,), "norm"),
                ("attn_q", (q, n_embd), "main"), ("attn_k", (kv, n_embd), "main"), ("attn_v", (kv, n_embd), "sensitive"),
                ("attn_output", (n_embd, q), "main"), ("attn_q", (q,), "bias"), ("attn_k", (kv,), "bias"), ("attn_v", (kv,), "bias"),
                ("attn_output", (n_embd,), "bias"), ("ffn_gate_inp", (n_expert, n_embd), "norm"), ("ffn_gate_inp", (n_expert,), "bias"),
                ("ffn_gate_exps", (n_expert, n_ff_exp, n_embd), "mxfp4"), ("ffn_up_exps", (n_expert, n_ff_exp, n_embd), "mxfp4"),
                ("ffn_down_exps", (n_expert, n_embd, n_ff_exp), "mxfp4"), ("ffn_gate_exps", (n_expert, n_ff_exp), "bias"),
                ("ffn_up_exps", (n_expert, n_ff_exp), "bias"), ("ffn_down_exps", (n_expert, n_embd), "bias")]
    if arch in LINEAR_SHAPES:
        return _hybrid_layer_tensors(arch, il, n_embd, n_ff, q, kv, head_dim, n_expert, n_ff_exp)
    out = [("attn_norm", (n_embd,), "norm"), ("attn_q", (q, n_embd), "main"), ("attn_k", (kv, n_embd), "main"),
           ("attn_v", (kv, n_embd), "sensitive"), ("attn_output", (n_embd, q), "main"), ("ffn_norm", (n_embd,), "norm")]
    if arch in ("gemma3", "qwen3moe"):
        out += [("attn_q_norm", (head_dim,), "norm"), ("attn_k_norm", (head_dim,), "norm")]
    if arch.startswith("gemma"):
        out += [("post_attention_norm", (n_embd,), "norm"), ("post_ffw_norm", (n_embd,), "norm")]
    if n_expert:
        out += [("ffn_gate_inp", (n_expert, n_embd), "norm"), ("ffn_gate_exps", (n_expert, n_ff_exp, n_embd), "main"),
                ("ffn_up_exps", (n_expert, n_ff_exp, n_embd), "main"), ("ffn_down_exps", (n_expert, n_embd, n_ff_exp), "sensitive")]
    else:
        out += [("ffn_gate", (n_ff, n_embd), "main"), ("ffn_up", (n_ff, n_embd), "main"), ("ffn_down", (n_embd, n_ff), "sensitive")]
    return out


# Levels of the shaped files where Q4_K_M cannot be made: GPT-OSS's 2880-wide rows fit no K-quant super-block,
# so it is the MXFP4_MOE level (Q8_0 beside the released MXFP4 experts).
SHAPE_LEVELS = {"gpt-oss-20b": "Q8_0"}


def write_shaped_gguf(path: Path, shape: str, level: str | None = None) -> Path:
    """A sparse GGUF (tensor data is a hole) with a real model's shape, metadata and vocabulary size, and a
    synthetic SentencePiece vocabulary: what llama.cpp needs to plan its buffers without reading weights."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

    from fixtures import SYNTH_LEVELS

    arch, n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, window, n_expert, n_used, n_ff_exp = SHAPES[shape]
    ftype, main, sensitive, out_type = SYNTH_LEVELS[level or SHAPE_LEVELS.get(shape, "Q4_K_M")]
    types = {"main": GGMLQuantizationType[main], "sensitive": GGMLQuantizationType[sensitive], "norm": GGMLQuantizationType.F32,
             "mxfp4": GGMLQuantizationType.MXFP4}
    final_norm = "token_embd_norm" if arch == "lfm2" else "output_norm"  # LFM2 names its final norm so
    tensors = [("token_embd.weight", (n_vocab, n_embd), GGMLQuantizationType[out_type]), (f"{final_norm}.weight", (n_embd,), types["norm"])]
    if not arch.startswith("gemma"):
        tensors.append(("output.weight", (n_vocab, n_embd), GGMLQuantizationType[out_type]))
    hybrid = shape in CONV_HYBRIDS or shape in MAMBA_HYBRIDS
    for i in range(n_layer):
        layer = (_conv_mamba_layer_tensors(shape, i, n_embd, n_ff, n_head * head_dim, n_head_kv * head_dim, head_dim, n_expert, n_ff_exp) if hybrid
                 else _layer_tensors(arch, i, n_embd, n_ff, n_head, n_head_kv, head_dim, n_expert, n_ff_exp))
        for name, shape_, role in layer:
            # role "bias" / "bare": an F32 tensor named .bias / with no suffix (llama.cpp's ssm_dt.bias, ssm_a)
            suffix = {"bias": ".bias", "bare": ""}.get(role, ".weight")
            tensors.append((f"blk.{i}.{name}{suffix}", shape_, types.get(role, types["norm"])))

    w = GGUFWriter(Path(path), arch)
    w.add_name(f"{shape} synthetic")
    w.add_file_type(LlamaFileType[ftype])
    w.add_block_count(n_layer)
    w.add_context_length(131072)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    if hybrid:  # no KV heads in the recurrent layers
        attention = (CONV_HYBRIDS.get(shape) or MAMBA_HYBRIDS[shape])[0]
        w.add_head_count_kv([n_head_kv if il in attention else 0 for il in range(n_layer)])
    else:
        w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(n_vocab)
    if window:
        w.add_sliding_window(window)
    if arch in LINEAR_SHAPES:
        n_k, n_v, head, conv = LINEAR_SHAPES[arch]
        w.add_ssm_conv_kernel(conv)
        w.add_ssm_state_size(head)
        w.add_ssm_group_count(n_k)
        w.add_ssm_time_step_rank(n_v)
        w.add_ssm_inner_size(n_v * head)
        w.add_full_attention_interval(4)
        w.add_rope_dimension_count(head_dim // 4)
        if arch != "qwen3next":
            w.add_rope_dimension_sections([11, 11, 10, 0])
    if shape in CONV_HYBRIDS:
        w.add_shortconv_l_cache(CONV_HYBRIDS[shape][1])
    if shape in MAMBA_HYBRIDS:
        n_heads, d_head, d_state, n_groups, d_conv = MAMBA_HYBRIDS[shape][1]
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_state_size(d_state)
        w.add_ssm_group_count(n_groups)
        w.add_ssm_time_step_rank(n_heads)
        w.add_ssm_inner_size(n_heads * d_head)
        w.add_expert_shared_feed_forward_length(MAMBA_HYBRIDS[shape][2])
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
        w.add_expert_feed_forward_length(n_ff_exp)
        if arch in LINEAR_SHAPES:
            w.add_expert_shared_feed_forward_length(n_ff)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    rest = n_vocab - len(specials) - len(byte_tokens)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(specials + byte_tokens + [f"\u2581t{i}" for i in range(rest)])
    w.add_token_scores([0.0] * 260 + [-float(i) for i in range(rest)])
    w.add_token_types([TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.UNKNOWN] + [TokenType.BYTE] * 256 + [TokenType.NORMAL] * rest)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)

    def nbytes(shape_, qtype) -> int:
        block, size = GGML_QUANT_SIZES[qtype]
        return int(np.prod(shape_)) // block * size

    for name, shape_, qtype in tensors:
        w.add_tensor_info(name, shape_, np.dtype(np.float32), nbytes(shape_, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    fout.truncate(fout.tell() + sum(w.ggml_pad(nbytes(s, t), w.data_alignment) for _, s, t in tensors))
    w.close()
    return Path(path)
