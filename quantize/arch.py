"""Supported architectures as data: HF architecture -> GGUF architecture, tensor names, shapes, layout.

Adding an architecture of the Llama family is adding an ARCHS entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgellm.errors import EdgeError


@dataclass(frozen=True)
class HParams:
    """The model shape, read from config.json in transformers 4 or 5 style."""

    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    n_vocab: int
    rms_eps: float
    rope_theta: float
    rope: dict[str, Any]  # rope_type and its parameters ("default" when unscaled)
    tied_embeddings: bool
    has_head_dim: bool  # head_dim given explicitly (written as key/value length, like llama.cpp does)


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope settings in `rope_parameters`; 4 in `rope_theta` + `rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    if "full_attention" in params:  # per-layer-type rope settings: the full-attention ones
        params = dict(params["full_attention"])
    params.update({k: v for k, v in (config.get("rope_scaling") or {}).items() if k not in params})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def read_hparams(config: dict[str, Any]) -> HParams:
    try:
        n_head = int(config["num_attention_heads"])
        n_embd = int(config["hidden_size"])
        rope = _rope(config)
        return HParams(
            n_layers=int(config["num_hidden_layers"]),
            n_embd=n_embd,
            n_ff=int(config["intermediate_size"]),
            n_head=n_head,
            n_head_kv=int(config.get("num_key_value_heads") or n_head),
            head_dim=int(config.get("head_dim") or n_embd // n_head),
            n_ctx=int(config.get("max_position_embeddings", 4096)),
            n_vocab=int(config["vocab_size"]),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope["rope_theta"]),
            rope=rope,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            has_head_dim=config.get("head_dim") is not None,
        )
    except KeyError as exc:
        raise EdgeError(f"config.json lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise EdgeError(f"config.json has a bad value: {exc}") from exc


Shape = Callable[[HParams], tuple[int, ...]]


@dataclass(frozen=True)
class TensorSpec:
    """One HF tensor (`{bid}` = layer index), its GGUF name, and its HF (row-major) shape."""

    hf: str
    gguf: str
    shape: Shape
    permute: str | None = None  # "q" or "k": rows reordered for llama.cpp's rope layout
    optional: bool = False
    untied_only: bool = False  # required unless tie_word_embeddings (then llama.cpp reuses token_embd)


def _q_rows(h: HParams) -> int:
    return h.n_head * h.head_dim


def _kv_rows(h: HParams) -> int:
    return h.n_head_kv * h.head_dim


LLAMA_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("model.embed_tokens.weight", "token_embd.weight", lambda h: (h.n_vocab, h.n_embd)),
    TensorSpec("model.norm.weight", "output_norm.weight", lambda h: (h.n_embd,)),
    TensorSpec("lm_head.weight", "output.weight", lambda h: (h.n_vocab, h.n_embd), untied_only=True),
    TensorSpec("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", lambda h: (h.n_embd,)),
    TensorSpec("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", lambda h: (_q_rows(h), h.n_embd), "q"),
    TensorSpec("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", lambda h: (_kv_rows(h), h.n_embd), "k"),
    TensorSpec("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", lambda h: (_kv_rows(h), h.n_embd)),
    TensorSpec("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", lambda h: (h.n_embd, _q_rows(h))),
    TensorSpec("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight", lambda h: (h.n_embd,)),
    TensorSpec("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", lambda h: (h.n_embd, h.n_ff)),
)



def _attn_biases(optional: bool) -> tuple[TensorSpec, ...]:
    """q/k/v biases (and Llama's optional o bias); they follow their weights' row layout."""
    biases = (
        TensorSpec("model.layers.{bid}.self_attn.q_proj.bias", "blk.{bid}.attn_q.bias", lambda h: (_q_rows(h),), "q", optional),
        TensorSpec("model.layers.{bid}.self_attn.k_proj.bias", "blk.{bid}.attn_k.bias", lambda h: (_kv_rows(h),), "k", optional),
        TensorSpec("model.layers.{bid}.self_attn.v_proj.bias", "blk.{bid}.attn_v.bias", lambda h: (_kv_rows(h),), None, optional),
    )
    return biases + (TensorSpec("model.layers.{bid}.self_attn.o_proj.bias", "blk.{bid}.attn_output.bias", lambda h: (h.n_embd,), None, True),)


# HF tensors that hold nothing llama.cpp needs (precomputed rope tables).
IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class ArchSpec:
    hf_arch: str
    model_type: str  # config.json's model_type, for configs that do not list `architectures`
    gguf_arch: str  # llama.cpp's architecture name (general.architecture and key prefix)
    tensors: tuple[TensorSpec, ...]
    permute_qk: bool  # HF stores Q/K rows in rotate-half order; llama.cpp's "llama" rope wants interleaved pairs
    rope_freqs: bool  # rope_type "llama3" -> a rope_freqs tensor of per-frequency factors


ARCHS: dict[str, ArchSpec] = {
    a.hf_arch: a
    for a in (
        # Llama checkpoints may carry attention biases (config attention_bias=true).
        ArchSpec("LlamaForCausalLM", "llama", "llama", LLAMA_TENSORS + _attn_biases(True), permute_qk=True, rope_freqs=True),
        ArchSpec("MistralForCausalLM", "mistral", "llama", LLAMA_TENSORS + _attn_biases(True), permute_qk=True, rope_freqs=True),
        # Qwen2 uses NEOX-style rope in llama.cpp (no reordering) and always has q/k/v biases.
        ArchSpec("Qwen2ForCausalLM", "qwen2", "qwen2", LLAMA_TENSORS + _attn_biases(False), permute_qk=False, rope_freqs=False),
    )
}


def arch_for(config: dict[str, Any]) -> ArchSpec:
    """The table entry for a config.json: by its `architectures`, else by its `model_type`."""
    names = config.get("architectures") or []
    if names:
        found = ARCHS.get(names[0])
        what = names[0]
    else:
        found = next((a for a in ARCHS.values() if a.model_type == config.get("model_type")), None)
        what = f"model_type {config.get('model_type')!r}"
    if found is None:
        raise EdgeError(f"unsupported architecture {what}; supported: {', '.join(ARCHS)}")
    return found


@dataclass(frozen=True)
class PlannedTensor:
    hf: str
    gguf: str
    shape: tuple[int, ...]  # HF row-major shape
    permute: str | None


def plan_tensors(arch: ArchSpec, h: HParams, present: dict[str, tuple[int, ...]]) -> list[PlannedTensor]:
    """Match the checkpoint's tensors (name -> shape) to the arch table; EdgeError on missing/extra/misshapen."""
    out: list[PlannedTensor] = []
    used: set[str] = set()
    for spec in arch.tensors:
        layers = range(h.n_layers) if "{bid}" in spec.hf else [None]
        for bid in layers:
            hf = spec.hf.format(bid=bid)
            if hf not in present:
                if spec.optional or (spec.untied_only and h.tied_embeddings):
                    continue
                raise EdgeError(f"checkpoint lacks tensor {hf} that {arch.hf_arch} needs")
            want = spec.shape(h)
            if tuple(present[hf]) != want:
                raise EdgeError(f"tensor {hf} has shape {list(present[hf])} but config.json implies {list(want)}")
            used.add(hf)
            out.append(PlannedTensor(hf, spec.gguf.format(bid=bid), want, spec.permute if arch.permute_qk else None))
    extra = sorted(n for n in present if n not in used and not IGNORED.search(n))
    if extra:
        raise EdgeError(f"checkpoint has tensor(s) {arch.hf_arch} does not use: {', '.join(extra[:5])}")
    return out
