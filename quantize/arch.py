"""Supported architectures as data: HF architecture -> GGUF architecture, tensor names, shapes, layout,
and the metadata and checks llama.cpp's graph for it needs.

Adding an architecture is adding an ARCHS row: its tensors, whether Q/K rows are reordered for llama.cpp's
rope, extra metadata keys (GGUFWriter method + where the value comes from in config.json), and checks for
configs that llama.cpp would run differently from transformers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgellm.errors import EdgeError


@dataclass(frozen=True)
class LayerAttn:
    """One layer's attention shape where layers differ (Gemma 4's global layers)."""

    head_dim: int
    n_head_kv: int
    k_is_v: bool = False  # no V projection: the keys' projection doubles as values


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
    n_rot: int  # rotated dimensions per head (fewer than head_dim with a partial rotary factor)
    n_expert: int = 0  # mixture of experts: experts per layer (0: a dense model)
    n_expert_used: int = 0
    n_ff_exp: int = 0  # one expert's feed-forward width
    layer_attn: tuple[LayerAttn, ...] = ()  # per layer, where layers differ
    kv_by_layer: bool = False  # the config gives some layers their own KV head count (written per layer)
    k_is_v: bool = False  # this layer's keys double as values (set by at_layer)
    n_ff_shexp: int = 0  # the shared expert's feed-forward width (0: none)
    recurrent: tuple[bool, ...] = ()  # per layer: keeps a fixed state (linear attention, convolution, Mamba2), not a KV cache
    ssm: SSMShape | None = None  # the linear-attention layers' shape, for hybrid models
    mxfp4: bool = False  # experts stored as MXFP4 blocks and scales (quantization_config's quant_method)
    mamba: MambaShape | None = None  # the Mamba2 layers' shape (Granite 4 hybrids)
    conv_cache: int = 0  # LFM2's short convolutions: the tokens each one sees (conv_L_cache)

    def at_layer(self, bid: int | None) -> HParams:
        """The shape as layer `bid` sees it (head size and KV heads of that layer)."""
        if bid is None or not self.layer_attn:
            return self
        layer = self.layer_attn[bid]
        return replace(self, head_dim=layer.head_dim, n_head_kv=layer.n_head_kv, k_is_v=layer.k_is_v)

    @property
    def head_dim_full(self) -> int:
        """The widest head (global layers'): llama.cpp's key/value length where layers differ."""
        return max((a.head_dim for a in self.layer_attn), default=self.head_dim)

    @property
    def head_count_kv(self) -> int | list[int]:
        """KV heads as llama.cpp reads them: one number, or one per layer where the config sets them so."""
        return [a.n_head_kv for a in self.layer_attn] if self.kv_by_layer else self.n_head_kv


@dataclass(frozen=True)
class SSMShape:
    """Gated delta net layers (Qwen3.5, Qwen3-Next): key and value heads, their width, the conv kernel."""

    n_k_heads: int
    n_v_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_kernel: int

    @property
    def key_dim(self) -> int:
        return self.n_k_heads * self.head_k_dim

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.head_v_dim

    @property
    def conv_dim(self) -> int:  # channels the short convolution runs over: q, k and v
        return 2 * self.key_dim + self.value_dim


@dataclass(frozen=True)
class MambaShape:
    """Mamba2 layers (Granite 4 hybrids): heads, their width, state size, groups sharing B and C, conv kernel."""

    n_heads: int
    d_head: int
    d_state: int
    n_groups: int
    d_conv: int
    d_inner: int  # expand x hidden size; n_heads x d_head in a consistent config

    @property
    def conv_dim(self) -> int:  # channels the convolution runs over: x, B and C
        return self.d_inner + 2 * self.n_groups * self.d_state

    @property
    def in_rows(self) -> int:  # the input projection's outputs: z, x, B, C and one dt per head
        return self.d_inner + self.conv_dim + self.n_heads


# layer_types (in transformers' names and the older ones releases still carry) of layers with a fixed state
RECURRENT_TYPES = {"linear_attention", "conv", "mamba"}


def _recurrent_layers(config: dict[str, Any], n_layers: int) -> tuple[bool, ...]:
    """Which layers keep a fixed state: from `layer_types`, LFM2's `full_attn_idxs`, or Qwen3-Next's every
    `full_attention_interval`-th layer attending; () for models without such layers."""
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        flags = tuple(isinstance(t, str) and t in RECURRENT_TYPES for t in types)  # other kinds: the checks name them
    elif isinstance(config.get("full_attn_idxs"), list):
        flags = tuple(il not in config["full_attn_idxs"] for il in range(n_layers))
    elif "linear_num_value_heads" in config:
        interval = int(config.get("full_attention_interval") or 4)
        flags = tuple((il + 1) % interval != 0 for il in range(n_layers))
    else:
        return ()
    return flags if any(flags) else ()


def _ssm_shape(config: dict[str, Any]) -> SSMShape | None:
    """The linear-attention layers' shape; none for models without them."""
    if "linear_num_value_heads" not in config:
        return None
    return SSMShape(
        int(config["linear_num_key_heads"]), int(config["linear_num_value_heads"]), int(config["linear_key_head_dim"]),
        int(config["linear_value_head_dim"]), int(config["linear_conv_kernel_dim"]),
    )


def _mamba_shape(config: dict[str, Any], n_embd: int) -> MambaShape | None:
    """The Mamba2 layers' shape (transformers' `mamba_` keys); none for models without them."""
    if "mamba_n_heads" not in config:
        return None
    n_heads, d_inner = int(config["mamba_n_heads"]), int(config.get("mamba_expand") or 2) * n_embd
    d_head = config.get("mamba_d_head")
    return MambaShape(
        n_heads, int(d_inner // n_heads if d_head in (None, "auto") else d_head), int(config["mamba_d_state"]),
        int(config.get("mamba_n_groups") or 1), int(config["mamba_d_conv"]), d_inner,
    )


def _ff_width(config: dict[str, Any]) -> int:
    """The MLP width. LFM2 derives it: two thirds of block_ff_dim, times block_ffn_dim_multiplier, rounded up
    to a multiple of block_multiple_of."""
    ff = int(config.get("block_ff_dim") or config["intermediate_size"])
    if config.get("block_auto_adjust_ff_dim"):
        ff = int(2 * ff / 3)
        if config.get("block_ffn_dim_multiplier") is not None:
            ff = int(float(config["block_ffn_dim_multiplier"]) * ff)
        step = int(config.get("block_multiple_of") or 256)  # transformers' default
        ff = step * -(-ff // step)
    return ff


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
    if "partial_rotary_factor" in config:
        params.setdefault("partial_rotary_factor", config["partial_rotary_factor"])
    return params


def _layer_overrides(config: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Layer index -> its own attention settings: transformers 5 saves them as `per_layer_config`; Gemma 4's
    own configs give the global layers' head size (and, when keys double as values, KV heads) instead."""
    overrides = config.get("per_layer_config")
    if overrides is not None:
        if not isinstance(overrides, dict):
            raise EdgeError("config.json's per_layer_config is not a table of layers")
        return overrides
    if config.get("global_head_dim") is None:
        return {}
    own = {"head_dim": config["global_head_dim"]}
    if config.get("attention_k_eq_v") and config.get("num_global_key_value_heads") is not None:
        own["num_key_value_heads"] = config["num_global_key_value_heads"]
    return {str(il): own for il, swa in enumerate(sliding_layers(config, n_layers, 6)) if not swa}


def _layer_attn(config: dict[str, Any], head_dim: int, n_head_kv: int, n_layers: int) -> tuple[LayerAttn, ...]:
    """Each layer's attention shape where the config gives some layers their own (else nothing)."""
    overrides = _layer_overrides(config, n_layers)
    if not overrides:
        return ()
    swa = sliding_layers(config, n_layers, 6)
    out = []
    for il in range(n_layers):
        layer = overrides.get(str(il)) or {}
        out.append(LayerAttn(int(layer.get("head_dim", head_dim)), int(layer.get("num_key_value_heads", n_head_kv)),
                             bool(config.get("attention_k_eq_v")) and not swa[il]))
    if any(not (0 < a.head_dim <= 1 << 16 and 0 < a.n_head_kv <= 1 << 16) for a in out):
        raise EdgeError("config.json's per_layer_config has a head size or KV head count out of range")
    return tuple(out)


def read_hparams(config: dict[str, Any]) -> HParams:
    try:
        n_head = int(config["num_attention_heads"])
        n_embd = int(config["hidden_size"])
        rope = _rope(config)
        head_dim = int(config.get("head_dim") or n_embd // n_head)
        partial = float(rope.get("partial_rotary_factor", 1.0))
        n_expert = int(config.get("num_local_experts") or config.get("num_experts") or 0)
        n_layers = int(config["num_hidden_layers"])
        n_head_kv = int(config.get("num_key_value_heads") or n_head)
        layer_attn = _layer_attn(config, head_dim, n_head_kv, n_layers)
        # llama.cpp counts rotated dimensions from the model width, as Phi's configs define them, or
        # from head_dim where the config gives it
        n_rot = head_dim if partial == 1.0 else int(partial * head_dim) if config.get("head_dim") else int(partial * n_embd) // n_head
        if rope["rope_type"] == "proportional":  # unrotated dimensions travel as infinite-wavelength factors
            n_rot = max((a.head_dim for a in layer_attn), default=head_dim)
        # MoE models may give only the experts' width (no dense layers); then no feed-forward length is written
        n_ff = _ff_width(config) if "moe_intermediate_size" not in config else int(config.get("intermediate_size") or 0)
        return HParams(
            n_layers=n_layers,
            n_embd=n_embd,
            n_ff=n_ff,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ctx=int(config.get("max_position_embeddings", 4096)),
            n_vocab=int(config["vocab_size"]),
            rms_eps=float(config.get("rms_norm_eps", config.get("norm_eps", 1e-6))),
            rope_theta=float(rope["rope_theta"]),
            rope=rope,
            tied_embeddings=bool(config.get("tie_word_embeddings", config.get("tie_embedding", False))),  # LFM2's early name
            has_head_dim=config.get("head_dim") is not None,
            n_rot=n_rot,
            n_expert=n_expert,
            n_expert_used=int(config.get("num_experts_per_tok") or 0) if n_expert else 0,
            n_ff_exp=int(config.get("moe_intermediate_size") or config["intermediate_size"]) if n_expert else 0,
            n_ff_shexp=int(config.get("shared_expert_intermediate_size") or config.get("shared_intermediate_size") or 0),
            layer_attn=layer_attn,
            kv_by_layer=any("num_key_value_heads" in (o or {}) for o in _layer_overrides(config, n_layers).values()),
            recurrent=_recurrent_layers(config, n_layers),
            ssm=_ssm_shape(config),
            mamba=_mamba_shape(config, n_embd),
            conv_cache=int(config.get("conv_L_cache") or 0),
            mxfp4=(config.get("quantization_config") or {}).get("quant_method") == "mxfp4",
        )
    except KeyError as exc:
        raise EdgeError(f"config.json lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as exc:
        raise EdgeError(f"config.json has a bad value: {exc}") from exc


Shape = Callable[[HParams], tuple[int, ...]]


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor from HF tensor(s): `{bid}` = layer index, `{xid}` = expert index (the experts of a
    layer are stacked into one 3-D tensor, expert-major). `shape` is the GGUF tensor's HF (row-major) shape."""

    hf: str
    gguf: str
    shape: Shape
    permute: str | None = None  # "q" or "k": rows reordered for llama.cpp's rope layout
    optional: bool = False
    untied_only: bool = False  # required unless tie_word_embeddings (then llama.cpp reuses token_embd)
    keep_f32: bool = False  # stored as F32 whatever the outtype (llama.cpp's converter does so for routers)
    absent_if_k_is_v: bool = False  # not in layers whose keys double as values (llama.cpp then reuses K)
    layers: str = ""  # "recurrent" / "attention": only in linear-attention / softmax-attention layers of a hybrid
    when: str = ""  # a WHEN entry: only in models of that kind ("experts" / "dense")
    reorder: str | None = None  # a REORDERS entry: rows or columns moved between heads
    values: str | None = None  # a VALUE_MAPS entry applied to every value
    shifted: bool = True  # the arch's norm_shift applies (when the name ends in norm.weight)
    hf_shape: Shape | None = None  # the HF tensor's shape where the GGUF tensor takes some of its rows (`reorder`)
    experts: str | None = None  # an EXPERT_LAYOUTS entry: a fused tensor of all experts, read expert by expert
    stored: str = ""  # "mxfp4" / "plain": only in checkpoints whose experts are stored so


def _q_rows(h: HParams) -> int:
    return h.n_head * h.head_dim


def _kv_rows(h: HParams) -> int:
    return h.n_head_kv * h.head_dim


def _embd(h: HParams) -> tuple[int, ...]:
    return (h.n_embd,)


EMBEDDINGS = (
    TensorSpec("model.embed_tokens.weight", "token_embd.weight", lambda h: (h.n_vocab, h.n_embd)),
    TensorSpec("model.norm.weight", "output_norm.weight", _embd),
)
OUTPUT = (TensorSpec("lm_head.weight", "output.weight", lambda h: (h.n_vocab, h.n_embd), untied_only=True),)
ATTN_NORM = (TensorSpec("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", _embd),)
FFN_NORM = (TensorSpec("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight", _embd),)
ATTENTION = (
    TensorSpec("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", lambda h: (_q_rows(h), h.n_embd), "q"),
    TensorSpec("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", lambda h: (_kv_rows(h), h.n_embd), "k"),
    TensorSpec("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", lambda h: (_kv_rows(h), h.n_embd), absent_if_k_is_v=True),
    TensorSpec("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", lambda h: (h.n_embd, _q_rows(h))),
)
QK_NORMS = (
    TensorSpec("model.layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight", lambda h: (h.head_dim,)),
    TensorSpec("model.layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight", lambda h: (h.head_dim,)),
)
MLP = (
    TensorSpec("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", lambda h: (h.n_embd, h.n_ff)),
)
LLAMA_TENSORS: tuple[TensorSpec, ...] = EMBEDDINGS + OUTPUT + ATTN_NORM + ATTENTION + FFN_NORM + MLP

# Gemma 2/3: a norm after attention and one before and after the MLP; the output reuses the embeddings.
GEMMA_TENSORS: tuple[TensorSpec, ...] = (
    EMBEDDINGS
    + ATTN_NORM
    + ATTENTION
    + (
        TensorSpec("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight", _embd),
        TensorSpec("model.layers.{bid}.pre_feedforward_layernorm.weight", "blk.{bid}.ffn_norm.weight", _embd),
        TensorSpec("model.layers.{bid}.post_feedforward_layernorm.weight", "blk.{bid}.post_ffw_norm.weight", _embd),
    )
    + MLP
)

# Phi-3: Q, K and V in one matrix, gate and up in another (llama.cpp splits them in its graph).
PHI3_TENSORS: tuple[TensorSpec, ...] = (
    EMBEDDINGS
    + OUTPUT
    + ATTN_NORM
    + FFN_NORM
    + (
        TensorSpec(
            "model.layers.{bid}.self_attn.qkv_proj.weight", "blk.{bid}.attn_qkv.weight", lambda h: (_q_rows(h) + 2 * _kv_rows(h), h.n_embd)
        ),
        TensorSpec("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", lambda h: (h.n_embd, _q_rows(h))),
        TensorSpec("model.layers.{bid}.mlp.gate_up_proj.weight", "blk.{bid}.ffn_up.weight", lambda h: (2 * h.n_ff, h.n_embd)),
        TensorSpec("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", lambda h: (h.n_embd, h.n_ff)),
    )
)


def _experts(router: str, prefix: str, gate: str, up: str, down: str) -> tuple[TensorSpec, ...]:
    """A router (kept in F32) and the experts' three matrices, each stacked over the experts."""
    blk = "model.layers.{bid}."
    return (
        TensorSpec(blk + router, "blk.{bid}.ffn_gate_inp.weight", lambda h: (h.n_expert, h.n_embd), keep_f32=True),
        TensorSpec(blk + prefix + gate, "blk.{bid}.ffn_gate_exps.weight", lambda h: (h.n_expert, h.n_ff_exp, h.n_embd)),
        TensorSpec(blk + prefix + up, "blk.{bid}.ffn_up_exps.weight", lambda h: (h.n_expert, h.n_ff_exp, h.n_embd)),
        TensorSpec(blk + prefix + down, "blk.{bid}.ffn_down_exps.weight", lambda h: (h.n_expert, h.n_embd, h.n_ff_exp)),
    )


_SHEXP = "model.layers.{bid}.mlp.shared_expert."
# Experts plus one shared expert every token goes through, its output scaled by a sigmoid gate.
SHARED_EXPERT = (
    TensorSpec(_SHEXP + "gate_proj.weight", "blk.{bid}.ffn_gate_shexp.weight", lambda h: (h.n_ff_shexp, h.n_embd)),
    TensorSpec(_SHEXP + "up_proj.weight", "blk.{bid}.ffn_up_shexp.weight", lambda h: (h.n_ff_shexp, h.n_embd)),
    TensorSpec(_SHEXP + "down_proj.weight", "blk.{bid}.ffn_down_shexp.weight", lambda h: (h.n_embd, h.n_ff_shexp)),
    TensorSpec("model.layers.{bid}.mlp.shared_expert_gate.weight", "blk.{bid}.ffn_gate_inp_shexp.weight", lambda h: (1, h.n_embd), keep_f32=True),
)
QWEN_MOE_EXPERTS = _experts("mlp.gate.weight", "mlp.experts.{xid}.", "gate_proj.weight", "up_proj.weight", "down_proj.weight")
MIXTRAL_EXPERTS = _experts("block_sparse_moe.gate.weight", "block_sparse_moe.experts.{xid}.", "w1.weight", "w3.weight", "w2.weight")


def _attn_biases(optional: bool) -> tuple[TensorSpec, ...]:
    """q/k/v biases (and Llama's optional o bias); they follow their weights' row layout."""
    biases = (
        TensorSpec("model.layers.{bid}.self_attn.q_proj.bias", "blk.{bid}.attn_q.bias", lambda h: (_q_rows(h),), "q", optional),
        TensorSpec("model.layers.{bid}.self_attn.k_proj.bias", "blk.{bid}.attn_k.bias", lambda h: (_kv_rows(h),), "k", optional),
        TensorSpec("model.layers.{bid}.self_attn.v_proj.bias", "blk.{bid}.attn_v.bias", lambda h: (_kv_rows(h),), None, optional),
    )
    return biases + (TensorSpec("model.layers.{bid}.self_attn.o_proj.bias", "blk.{bid}.attn_output.bias", lambda h: (h.n_embd,), None, True),)


# Qwen3.5: gated delta net layers (llama.cpp's ssm_* tensors) and gated-query attention layers between them.
def _ssm(h: HParams) -> SSMShape:
    assert h.ssm is not None
    return h.ssm


_LIN = "model.layers.{bid}.linear_attn."
QWEN35_LINEAR = (
    TensorSpec(_LIN + "in_proj_qkv.weight", "blk.{bid}.attn_qkv.weight", lambda h: (_ssm(h).conv_dim, h.n_embd), layers="recurrent", reorder="v_after_qk"),
    TensorSpec(_LIN + "in_proj_z.weight", "blk.{bid}.attn_gate.weight", lambda h: (_ssm(h).value_dim, h.n_embd), layers="recurrent", reorder="v_heads"),
    TensorSpec(_LIN + "in_proj_b.weight", "blk.{bid}.ssm_beta.weight", lambda h: (_ssm(h).n_v_heads, h.n_embd), layers="recurrent", reorder="v_scalars"),
    TensorSpec(_LIN + "in_proj_a.weight", "blk.{bid}.ssm_alpha.weight", lambda h: (_ssm(h).n_v_heads, h.n_embd), layers="recurrent", reorder="v_scalars"),
    TensorSpec(_LIN + "conv1d.weight", "blk.{bid}.ssm_conv1d.weight", lambda h: (_ssm(h).conv_dim, _ssm(h).conv_kernel), keep_f32=True,
               layers="recurrent", reorder="v_after_qk"),
    TensorSpec(_LIN + "dt_bias", "blk.{bid}.ssm_dt.bias", lambda h: (_ssm(h).n_v_heads,), layers="recurrent", reorder="v_scalars"),
    TensorSpec(_LIN + "A_log", "blk.{bid}.ssm_a", lambda h: (_ssm(h).n_v_heads,), layers="recurrent", reorder="v_scalars", values="neg_exp"),
    # the gated output norm multiplies by its weight as stored, unlike the model's other norms
    TensorSpec(_LIN + "norm.weight", "blk.{bid}.ssm_norm.weight", lambda h: (_ssm(h).head_v_dim,), layers="recurrent", shifted=False),
    TensorSpec(_LIN + "out_proj.weight", "blk.{bid}.ssm_out.weight", lambda h: (h.n_embd, _ssm(h).value_dim), layers="recurrent", reorder="v_columns"),
)
QWEN35_ATTENTION = (
    # the query projection also yields the output gate: each head's query rows, then its gate rows
    TensorSpec("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", lambda h: (2 * _q_rows(h), h.n_embd), layers="attention"),
    TensorSpec("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", lambda h: (_kv_rows(h), h.n_embd), layers="attention"),
    TensorSpec("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", lambda h: (_kv_rows(h), h.n_embd), layers="attention"),
    TensorSpec("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", lambda h: (h.n_embd, _q_rows(h)), layers="attention"),
    TensorSpec("model.layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight", lambda h: (h.head_dim,), layers="attention"),
    TensorSpec("model.layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight", lambda h: (h.head_dim,), layers="attention"),
)
QWEN35_NORMS: tuple[TensorSpec, ...] = (
    EMBEDDINGS + OUTPUT + ATTN_NORM
    + (TensorSpec("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight", _embd),)
)
QWEN35_LAYERS = QWEN35_NORMS + QWEN35_LINEAR + QWEN35_ATTENTION
QWEN35_TENSORS = QWEN35_LAYERS + MLP


# Qwen3-Next: each key head's q, k, v and gate rows in one matrix, split by llama.cpp's converter into the q, k
# and v of all heads (one after the other) and the gates; beta and alpha stay together per key head.
_QKVZ_ROWS = lambda h: (_ssm(h).conv_dim + _ssm(h).value_dim, h.n_embd)  # noqa: E731
QWEN3NEXT_LINEAR = (
    TensorSpec(_LIN + "in_proj_qkvz.weight", "blk.{bid}.attn_qkv.weight", lambda h: (_ssm(h).conv_dim, h.n_embd), layers="recurrent",
               reorder="qkvz_qkv", hf_shape=_QKVZ_ROWS),
    TensorSpec(_LIN + "in_proj_qkvz.weight", "blk.{bid}.attn_gate.weight", lambda h: (_ssm(h).value_dim, h.n_embd), layers="recurrent",
               reorder="qkvz_z", hf_shape=_QKVZ_ROWS),
    TensorSpec(_LIN + "in_proj_ba.weight", "blk.{bid}.ssm_ba.weight", lambda h: (2 * _ssm(h).n_v_heads, h.n_embd), layers="recurrent"),
    TensorSpec(_LIN + "conv1d.weight", "blk.{bid}.ssm_conv1d.weight", lambda h: (_ssm(h).conv_dim, _ssm(h).conv_kernel), keep_f32=True,
               layers="recurrent"),
    TensorSpec(_LIN + "dt_bias", "blk.{bid}.ssm_dt.bias", lambda h: (_ssm(h).n_v_heads,), layers="recurrent"),
    TensorSpec(_LIN + "A_log", "blk.{bid}.ssm_a", lambda h: (_ssm(h).n_v_heads,), layers="recurrent", values="neg_exp"),
    TensorSpec(_LIN + "norm.weight", "blk.{bid}.ssm_norm.weight", lambda h: (_ssm(h).head_v_dim,), layers="recurrent", shifted=False),
    TensorSpec(_LIN + "out_proj.weight", "blk.{bid}.ssm_out.weight", lambda h: (h.n_embd, _ssm(h).value_dim), layers="recurrent"),
)


# GPT-OSS: each layer's experts fused into one tensor per matrix, gate and up rows interleaved (gate on even
# rows, up on odd ones). As released the matrices are MXFP4 (blocks of 32 4-bit values sharing a power-of-two
# scale), kept so in the GGUF; a dequantized checkpoint stores them plain, each expert's matrix transposed.
@dataclass(frozen=True)
class ExpertLayout:
    rows: slice  # the rows of each expert's (out, in) matrix, or of its bias, that the GGUF tensor takes
    transposed: bool = False  # stored (in, out) per expert
    mxfp4: bool = False  # stored as `<name>_blocks` (experts, out, in / 32, 16) and `<name>_scales` (experts, out, in / 32)

    def scales_name(self, blocks: str) -> str:
        return blocks.removesuffix("_blocks") + "_scales"


_EVEN, _ODD, _ALL = slice(0, None, 2), slice(1, None, 2), slice(None)
EXPERT_LAYOUTS = {
    "even": ExpertLayout(_EVEN), "odd": ExpertLayout(_ODD),
    "even_t": ExpertLayout(_EVEN, transposed=True), "odd_t": ExpertLayout(_ODD, transposed=True), "all_t": ExpertLayout(_ALL, transposed=True),
    "even_mxfp4": ExpertLayout(_EVEN, mxfp4=True), "odd_mxfp4": ExpertLayout(_ODD, mxfp4=True), "all_mxfp4": ExpertLayout(_ALL, mxfp4=True),
}
MXFP4_BLOCK = 32  # values per block (one scale byte and 16 bytes of values)

_OSS = "model.layers.{bid}.mlp."
_OSS_GATE = lambda h: (h.n_expert, h.n_ff_exp, h.n_embd)  # noqa: E731
_OSS_DOWN = lambda h: (h.n_expert, h.n_embd, h.n_ff_exp)  # noqa: E731
_OSS_GATE_UP_BLOCKS = lambda h: (h.n_expert, 2 * h.n_ff_exp, h.n_embd // MXFP4_BLOCK, MXFP4_BLOCK // 2)  # noqa: E731
_OSS_DOWN_BLOCKS = lambda h: (h.n_expert, h.n_embd, h.n_ff_exp // MXFP4_BLOCK, MXFP4_BLOCK // 2)  # noqa: E731
_OSS_GATE_UP_PLAIN = lambda h: (h.n_expert, h.n_embd, 2 * h.n_ff_exp)  # noqa: E731
_OSS_GATE_UP_BIAS = lambda h: (h.n_expert, 2 * h.n_ff_exp)  # noqa: E731
GPT_OSS_EXPERTS = (
    TensorSpec(_OSS + "router.weight", "blk.{bid}.ffn_gate_inp.weight", lambda h: (h.n_expert, h.n_embd), keep_f32=True),
    TensorSpec(_OSS + "router.bias", "blk.{bid}.ffn_gate_inp.bias", lambda h: (h.n_expert,)),
    TensorSpec(_OSS + "experts.gate_up_proj_blocks", "blk.{bid}.ffn_gate_exps.weight", _OSS_GATE, experts="even_mxfp4", stored="mxfp4", hf_shape=_OSS_GATE_UP_BLOCKS),
    TensorSpec(_OSS + "experts.gate_up_proj_blocks", "blk.{bid}.ffn_up_exps.weight", _OSS_GATE, experts="odd_mxfp4", stored="mxfp4", hf_shape=_OSS_GATE_UP_BLOCKS),
    TensorSpec(_OSS + "experts.down_proj_blocks", "blk.{bid}.ffn_down_exps.weight", _OSS_DOWN, experts="all_mxfp4", stored="mxfp4", hf_shape=_OSS_DOWN_BLOCKS),
    TensorSpec(_OSS + "experts.gate_up_proj", "blk.{bid}.ffn_gate_exps.weight", _OSS_GATE, experts="even_t", stored="plain", hf_shape=_OSS_GATE_UP_PLAIN),
    TensorSpec(_OSS + "experts.gate_up_proj", "blk.{bid}.ffn_up_exps.weight", _OSS_GATE, experts="odd_t", stored="plain", hf_shape=_OSS_GATE_UP_PLAIN),
    TensorSpec(_OSS + "experts.down_proj", "blk.{bid}.ffn_down_exps.weight", _OSS_DOWN, experts="all_t", stored="plain",
               hf_shape=lambda h: (h.n_expert, h.n_ff_exp, h.n_embd)),
    TensorSpec(_OSS + "experts.gate_up_proj_bias", "blk.{bid}.ffn_gate_exps.bias", lambda h: (h.n_expert, h.n_ff_exp), experts="even", hf_shape=_OSS_GATE_UP_BIAS),
    TensorSpec(_OSS + "experts.gate_up_proj_bias", "blk.{bid}.ffn_up_exps.bias", lambda h: (h.n_expert, h.n_ff_exp), experts="odd", hf_shape=_OSS_GATE_UP_BIAS),
    TensorSpec(_OSS + "experts.down_proj_bias", "blk.{bid}.ffn_down_exps.bias", lambda h: (h.n_expert, h.n_embd)),
)
# Attention with biases on every projection and a learned sink logit per head; a norm before the experts.
GPT_OSS_TENSORS: tuple[TensorSpec, ...] = (
    EMBEDDINGS + OUTPUT + ATTN_NORM + ATTENTION + _attn_biases(False)[:3]
    + (
        TensorSpec("model.layers.{bid}.self_attn.o_proj.bias", "blk.{bid}.attn_output.bias", _embd),
        TensorSpec("model.layers.{bid}.self_attn.sinks", "blk.{bid}.attn_sinks.weight", lambda h: (h.n_head,)),
        TensorSpec("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight", _embd),
    )
    + GPT_OSS_EXPERTS
)


# LFM2: gated short convolutions (input projection to b, c and x; a depthwise kernel; output projection) in
# most layers, attention with q/k norms in the others; the final norm is stored as the embeddings' norm.
_CONV = "model.layers.{bid}.conv."
_LFM2_ATTN = "model.layers.{bid}.self_attn."
LFM2_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("model.embed_tokens.weight", "token_embd.weight", lambda h: (h.n_vocab, h.n_embd)),
    TensorSpec("model.embedding_norm.weight", "token_embd_norm.weight", _embd),
    *OUTPUT,
    TensorSpec("model.layers.{bid}.operator_norm.weight", "blk.{bid}.attn_norm.weight", _embd),
    TensorSpec("model.layers.{bid}.ffn_norm.weight", "blk.{bid}.ffn_norm.weight", _embd),
    TensorSpec(_CONV + "in_proj.weight", "blk.{bid}.shortconv.in_proj.weight", lambda h: (3 * h.n_embd, h.n_embd), layers="recurrent"),
    TensorSpec(_CONV + "conv.weight", "blk.{bid}.shortconv.conv.weight", lambda h: (h.n_embd, h.conv_cache), keep_f32=True, layers="recurrent"),
    TensorSpec(_CONV + "out_proj.weight", "blk.{bid}.shortconv.out_proj.weight", lambda h: (h.n_embd, h.n_embd), layers="recurrent"),
    TensorSpec(_LFM2_ATTN + "q_proj.weight", "blk.{bid}.attn_q.weight", lambda h: (_q_rows(h), h.n_embd), layers="attention"),
    TensorSpec(_LFM2_ATTN + "k_proj.weight", "blk.{bid}.attn_k.weight", lambda h: (_kv_rows(h), h.n_embd), layers="attention"),
    TensorSpec(_LFM2_ATTN + "v_proj.weight", "blk.{bid}.attn_v.weight", lambda h: (_kv_rows(h), h.n_embd), layers="attention"),
    TensorSpec(_LFM2_ATTN + "out_proj.weight", "blk.{bid}.attn_output.weight", lambda h: (h.n_embd, _q_rows(h)), layers="attention"),
    TensorSpec(_LFM2_ATTN + "q_layernorm.weight", "blk.{bid}.attn_q_norm.weight", lambda h: (h.head_dim,), layers="attention"),
    TensorSpec(_LFM2_ATTN + "k_layernorm.weight", "blk.{bid}.attn_k_norm.weight", lambda h: (h.head_dim,), layers="attention"),
    TensorSpec("model.layers.{bid}.feed_forward.w1.weight", "blk.{bid}.ffn_gate.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("model.layers.{bid}.feed_forward.w3.weight", "blk.{bid}.ffn_up.weight", lambda h: (h.n_ff, h.n_embd)),
    TensorSpec("model.layers.{bid}.feed_forward.w2.weight", "blk.{bid}.ffn_down.weight", lambda h: (h.n_embd, h.n_ff)),
)


# Granite 4 hybrids: Mamba2 layers and attention layers, each followed by a shared MLP (gate and up in one
# matrix) and, in the MoE models, experts (theirs stacked per layer, gate and up again in one).
def _mamba(h: HParams) -> MambaShape:
    assert h.mamba is not None
    return h.mamba


_MAMBA = "model.layers.{bid}.mamba."
_GRANITE_MOE = "model.layers.{bid}.block_sparse_moe."
_SHARED_MLP = "model.layers.{bid}.shared_mlp."
_GATE_UP_EXPS = lambda h: (h.n_expert, 2 * h.n_ff_exp, h.n_embd)  # noqa: E731
_GATE_UP_SHARED = lambda h: (2 * h.n_ff_shexp, h.n_embd)  # noqa: E731


def _shared_mlp(suffix: str, when: str) -> tuple[TensorSpec, ...]:
    """The shared MLP: llama.cpp's shared expert in MoE models, the plain feed-forward in dense ones."""
    return (
        TensorSpec(_SHARED_MLP + "input_linear.weight", f"blk.{{bid}}.ffn_gate{suffix}.weight", lambda h: (h.n_ff_shexp, h.n_embd),
                   when=when, reorder="first_half", hf_shape=_GATE_UP_SHARED),
        TensorSpec(_SHARED_MLP + "input_linear.weight", f"blk.{{bid}}.ffn_up{suffix}.weight", lambda h: (h.n_ff_shexp, h.n_embd),
                   when=when, reorder="second_half", hf_shape=_GATE_UP_SHARED),
        TensorSpec(_SHARED_MLP + "output_linear.weight", f"blk.{{bid}}.ffn_down{suffix}.weight", lambda h: (h.n_embd, h.n_ff_shexp), when=when),
    )


GRANITE_HYBRID_TENSORS: tuple[TensorSpec, ...] = (
    EMBEDDINGS + OUTPUT + ATTN_NORM + FFN_NORM
    + tuple(replace(t, layers="attention") for t in ATTENTION)
    + (
        TensorSpec(_MAMBA + "in_proj.weight", "blk.{bid}.ssm_in.weight", lambda h: (_mamba(h).in_rows, h.n_embd), layers="recurrent"),
        TensorSpec(_MAMBA + "conv1d.weight", "blk.{bid}.ssm_conv1d.weight", lambda h: (_mamba(h).conv_dim, _mamba(h).d_conv), keep_f32=True,
                   layers="recurrent"),
        TensorSpec(_MAMBA + "conv1d.bias", "blk.{bid}.ssm_conv1d.bias", lambda h: (_mamba(h).conv_dim,), layers="recurrent"),
        TensorSpec(_MAMBA + "dt_bias", "blk.{bid}.ssm_dt.bias", lambda h: (_mamba(h).n_heads,), layers="recurrent"),
        TensorSpec(_MAMBA + "A_log", "blk.{bid}.ssm_a", lambda h: (_mamba(h).n_heads, 1), keep_f32=True, layers="recurrent", values="neg_exp"),
        TensorSpec(_MAMBA + "D", "blk.{bid}.ssm_d", lambda h: (_mamba(h).n_heads, 1), keep_f32=True, layers="recurrent"),
        # the gated norm runs over each group's channels
        TensorSpec(_MAMBA + "norm.weight", "blk.{bid}.ssm_norm.weight", lambda h: (_mamba(h).n_groups, _mamba(h).d_inner // _mamba(h).n_groups),
                   layers="recurrent", hf_shape=lambda h: (_mamba(h).d_inner,)),
        TensorSpec(_MAMBA + "out_proj.weight", "blk.{bid}.ssm_out.weight", lambda h: (h.n_embd, _mamba(h).d_inner), layers="recurrent"),
        TensorSpec(_GRANITE_MOE + "router.layer.weight", "blk.{bid}.ffn_gate_inp.weight", lambda h: (h.n_expert, h.n_embd), keep_f32=True,
                   when="experts"),
        TensorSpec(_GRANITE_MOE + "input_linear.weight", "blk.{bid}.ffn_gate_exps.weight", lambda h: (h.n_expert, h.n_ff_exp, h.n_embd),
                   when="experts", reorder="first_half_per_row", hf_shape=_GATE_UP_EXPS),
        TensorSpec(_GRANITE_MOE + "input_linear.weight", "blk.{bid}.ffn_up_exps.weight", lambda h: (h.n_expert, h.n_ff_exp, h.n_embd),
                   when="experts", reorder="second_half_per_row", hf_shape=_GATE_UP_EXPS),
        TensorSpec(_GRANITE_MOE + "output_linear.weight", "blk.{bid}.ffn_down_exps.weight", lambda h: (h.n_expert, h.n_embd, h.n_ff_exp),
                   when="experts"),
    )
    + _shared_mlp("_shexp", "experts") + _shared_mlp("", "dense")
)


def _qkvz_parts(h: HParams) -> dict[str, np.ndarray]:
    """Row indices of q, k, v and z in the qkvz matrix, each for all key heads in order."""
    s = _ssm(h)
    per_v = s.n_v_heads // s.n_k_heads * s.head_v_dim
    sizes = {"q": s.head_k_dim, "k": s.head_k_dim, "v": per_v, "z": per_v}
    block = np.arange(s.n_k_heads * sum(sizes.values())).reshape(s.n_k_heads, -1)
    out, start = {}, 0
    for part, size in sizes.items():
        out[part] = block[:, start:start + size].reshape(-1)
        start += size
    return out


def _v_head_order(h: HParams, head: int) -> np.ndarray:
    """HF groups value heads by the key head they share; llama.cpp's graph broadcasts key heads over value
    heads tiled ([k0, k1, k0, k1, ...]), so value heads move from grouped to tiled order (index of rows)."""
    s = _ssm(h)
    per_k = s.n_v_heads // s.n_k_heads
    return np.arange(s.n_v_heads * head).reshape(s.n_k_heads, per_k, head).swapaxes(0, 1).reshape(-1)


def _rows_after(h: HParams, rows: np.ndarray, skip: int, head: int) -> np.ndarray:
    return np.concatenate([rows[:skip], rows[skip:][_v_head_order(h, head)]])


REORDERS: dict[str, Callable[[HParams, np.ndarray], np.ndarray]] = {
    "v_after_qk": lambda h, a: _rows_after(h, a, 2 * _ssm(h).key_dim, _ssm(h).head_v_dim),
    "v_heads": lambda h, a: a[_v_head_order(h, _ssm(h).head_v_dim)],
    "v_scalars": lambda h, a: a[_v_head_order(h, 1)],
    "v_columns": lambda h, a: a[:, _v_head_order(h, _ssm(h).head_v_dim)],
    "qkvz_qkv": lambda h, a: a[np.concatenate([_qkvz_parts(h)[p] for p in "qkv"])],
    "qkvz_z": lambda h, a: a[_qkvz_parts(h)["z"]],
    # gate and up in one matrix: the first and second half of its rows (of each expert's, a row here)
    "first_half": lambda h, a: a[: len(a) // 2],
    "second_half": lambda h, a: a[len(a) // 2:],
    "first_half_per_row": lambda h, a: a[:, : a.shape[1] // 2],
    "second_half_per_row": lambda h, a: a[:, a.shape[1] // 2:],
}
VALUE_MAPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # the decay's log is stored; llama.cpp's graph wants -exp(A_log), rounded once from float64 as torch does
    "neg_exp": lambda v: -np.exp(v.astype(np.float64)),
}


# HF tensors that hold nothing llama.cpp needs (precomputed rope tables).
IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")


# --- metadata beyond the common keys -------------------------------------------------------------------

Config = dict[str, Any]


# What a metadata value must be before it reaches the file (config.json is untrusted input).
KINDS: dict[str, Callable[[Any], bool]] = {
    "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 32,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
    "flags": lambda v: isinstance(v, list) and all(isinstance(x, bool) for x in v),
    "flag": lambda v: isinstance(v, bool),
    "counts": lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 16 for x in v),
}


@dataclass(frozen=True)
class MetaKey:
    """One extra GGUF key: the GGUFWriter method that writes it (or, for an array the gguf package has no
    method for, the key itself: "{arch}.name"), its value (None: not written) and its kind."""

    writer: str
    value: Callable[[Config, HParams], Any]
    kind: str = "count"


def _opt(name: str) -> Callable[[Config, HParams], Any]:
    return lambda c, h: c.get(name) or None


def _need(name: str) -> Callable[[Config, HParams], Any]:
    def get(c: Config, h: HParams) -> Any:
        if c.get(name) is None:
            raise EdgeError(f"config.json lacks {name!r}")
        return c[name]

    return get


def sliding_layers(c: Config, n_layers: int, default_pattern: int) -> list[bool]:
    """Which layers attend through a sliding window: transformers 5 lists `layer_types`; older configs give
    a period (`sliding_window_pattern`: every n-th layer is global, the others slide), as llama.cpp does."""
    types = c.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        return [t == "sliding_attention" for t in types]
    n = c.get("sliding_window_pattern")
    n = n if KINDS["count"](n) and n > 0 else default_pattern
    return [il % n < n - 1 for il in range(n_layers)]


def _swa_pattern(default: int) -> Callable[[Config, HParams], Any]:
    return lambda c, h: sliding_layers(c, h.n_layers, default)


def _local_rope_theta(c: Config, h: HParams) -> Any:
    """The rope base of sliding-window layers (transformers 5: per layer type; 4: rope_local_base_freq)."""
    return ((c.get("rope_parameters") or {}).get("sliding_attention") or {}).get("rope_theta") or c.get("rope_local_base_freq")


def _longrope_attn_factor(c: Config, h: HParams) -> Any:
    """Phi-3's long-context rope scales attention by sqrt(1 + ln(s) / ln(n_orig)), s the context extension."""
    if h.rope["rope_type"] not in ("longrope", "su"):
        return None
    orig = _original_ctx(c, h)
    if not (KINDS["count"](orig) and orig > 1):
        raise EdgeError(f"config.json's long-context rope needs original_max_position_embeddings above 1, not {orig!r}")
    scale = h.n_ctx / orig
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0


def _original_ctx(c: Config, h: HParams) -> Any:
    return h.rope.get("original_max_position_embeddings", c.get("original_max_position_embeddings"))


EXPERT_FF = MetaKey("add_expert_feed_forward_length", lambda c, h: h.n_ff_exp)
GEMMA2_KEYS = (
    MetaKey("add_sliding_window", _need("sliding_window")),
    MetaKey("add_sliding_window_pattern", _swa_pattern(2), "flags"),
    MetaKey("add_attn_logit_softcapping", _need("attn_logit_softcapping"), "number"),
    MetaKey("add_final_logit_softcapping", _need("final_logit_softcapping"), "number"),
)
GEMMA3_KEYS = (
    MetaKey("add_sliding_window", _need("sliding_window")),
    MetaKey("add_sliding_window_pattern", _swa_pattern(6), "flags"),
    MetaKey("add_rope_freq_base_swa", _local_rope_theta, "number"),
    MetaKey("add_final_logit_softcapping", _opt("final_logit_softcapping"), "number"),
)


def _swa_rope(c: Config) -> dict[str, Any]:
    """The sliding-window layers' rope settings ({} where the config has none, or not as a table)."""
    params = c.get("rope_parameters")
    swa = params.get("sliding_attention") if isinstance(params, dict) else None
    return swa if isinstance(swa, dict) else {}


def _swa_rot(c: Config, h: HParams) -> Any:
    """Rotated dimensions of the sliding-window layers' heads."""
    partial = _swa_rope(c).get("partial_rotary_factor", 1.0)
    return int(h.head_dim * partial) if KINDS["number"](partial) else None


# Gemma 4: global layers have wider heads (key/value length) than sliding-window ones (the _swa keys).
GEMMA4_KEYS = (
    MetaKey("add_sliding_window", _need("sliding_window")),
    MetaKey("add_sliding_window_pattern", _swa_pattern(6), "flags"),
    MetaKey("add_rope_freq_base_swa", _local_rope_theta, "number"),
    MetaKey("add_final_logit_softcapping", _opt("final_logit_softcapping"), "number"),
    MetaKey("add_shared_kv_layers", lambda c, h: c.get("num_kv_shared_layers") or 0),
    MetaKey("add_embedding_length_per_layer_input", lambda c, h: c.get("hidden_size_per_layer_input") or 0),
    MetaKey("add_key_length_swa", lambda c, h: h.head_dim),
    MetaKey("add_value_length_swa", lambda c, h: h.head_dim),
    MetaKey("add_rope_dimension_count_swa", _swa_rot),
)
PHI3_KEYS = (
    MetaKey("add_rope_scaling_orig_ctx_len", _original_ctx),
    MetaKey("add_sliding_window", lambda c, h: c.get("sliding_window") or 0),  # llama.cpp runs Phi-3 with full attention
    MetaKey("add_rope_scaling_attn_factors", _longrope_attn_factor, "number"),
)

# Qwen3.5 rotates with interleaved multi-axis sections; a text-only model has one axis, and llama.cpp
# needs the sections written (transformers' default where the config gives none).
QWEN35_MROPE_SECTIONS = [11, 11, 10, 0]


def _mrope_sections(c: Config, h: HParams) -> Any:
    sections = h.rope.get("mrope_section")
    if sections is None:
        return QWEN35_MROPE_SECTIONS
    return list(sections) + [0] * (4 - len(sections)) if isinstance(sections, list) and len(sections) <= 4 else sections


QWEN35_KEYS = (
    MetaKey("add_ssm_conv_kernel", lambda c, h: _ssm(h).conv_kernel),
    MetaKey("add_ssm_state_size", lambda c, h: _ssm(h).head_k_dim),
    MetaKey("add_ssm_group_count", lambda c, h: _ssm(h).n_k_heads),
    MetaKey("add_ssm_time_step_rank", lambda c, h: _ssm(h).n_v_heads),
    MetaKey("add_ssm_inner_size", lambda c, h: _ssm(h).value_dim),
    MetaKey("{arch}.attention.recurrent_layers", lambda c, h: list(h.recurrent), "flags"),
    MetaKey("add_full_attention_interval", lambda c, h: c.get("full_attention_interval", 4)),
    MetaKey("add_rope_dimension_sections", _mrope_sections, "counts"),
)


GPT_OSS_KEYS = (
    MetaKey("add_sliding_window", _need("sliding_window")),
    MetaKey("add_sliding_window_pattern", _swa_pattern(2), "flags"),
    EXPERT_FF,
)


SHARED_EXPERT_KEYS = (EXPERT_FF, MetaKey("add_expert_shared_feed_forward_length", lambda c, h: h.n_ff_shexp))
QWEN35MOE_KEYS = QWEN35_KEYS + SHARED_EXPERT_KEYS
LFM2_KEYS = (MetaKey("add_shortconv_l_cache", lambda c, h: h.conv_cache),)
GRANITE_HYBRID_KEYS = (
    MetaKey("add_attention_scale", _opt("attention_multiplier"), "number"),
    MetaKey("add_embedding_scale", _opt("embedding_multiplier"), "number"),
    MetaKey("add_residual_scale", _opt("residual_multiplier"), "number"),
    MetaKey("add_logit_scale", _opt("logits_scaling"), "number"),
    MetaKey("add_expert_shared_feed_forward_length", lambda c, h: h.n_ff_shexp),
    # a dense model still declares no experts, as llama.cpp's converter writes it
    MetaKey("add_expert_count", lambda c, h: None if h.n_expert else 0),
    MetaKey("add_expert_used_count", lambda c, h: None if h.n_expert else 0),
    MetaKey("add_ssm_conv_kernel", lambda c, h: _mamba(h).d_conv),
    MetaKey("add_ssm_state_size", lambda c, h: _mamba(h).d_state),
    MetaKey("add_ssm_group_count", lambda c, h: _mamba(h).n_groups),
    MetaKey("add_ssm_inner_size", lambda c, h: _mamba(h).d_inner),
    MetaKey("add_ssm_time_step_rank", lambda c, h: _mamba(h).n_heads),
    MetaKey("add_rope_scaling_finetuned", lambda c, h: False, "flag"),  # llama.cpp's granitehybrid then applies no rope
)
QWEN3NEXT_KEYS = QWEN35_KEYS[:-1] + SHARED_EXPERT_KEYS  # no rope sections: Qwen3-Next rotates the usual way


# --- configs llama.cpp would run differently ---------------------------------------------------------


@dataclass(frozen=True)
class Check:
    ok: Callable[[Config, HParams], bool]
    problem: str  # what is wrong, for the error line


def _gemma_query_scale(big_layers: int) -> Check:
    """llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(n_embd / n_head) for the 27B model (known by
    its layer count); it does not read query_pre_attn_scalar, so another value would change the model."""

    def ok(c: Config, h: HParams) -> bool:
        expected = h.n_embd // h.n_head if h.n_layers == big_layers else h.head_dim
        scalar = c.get("query_pre_attn_scalar", expected)
        return KINDS["number"](scalar) and float(scalar) == float(expected)

    return Check(ok, "query_pre_attn_scalar differs from the query scale llama.cpp uses for this shape")


LLAMA_MAX_EXPERTS = 1024  # llama.cpp refuses more experts per layer


def _experts_ok(c: Config, h: HParams) -> bool:
    return 0 < h.n_expert <= LLAMA_MAX_EXPERTS and 0 < h.n_expert_used <= h.n_expert and h.n_ff_exp > 0


NO_SLIDING_WINDOW = Check(lambda c, h: not c.get("use_sliding_window"), "use_sliding_window is set, and llama.cpp runs this architecture with full attention")
QWEN3_MOE_CHECKS = (
    NO_SLIDING_WINDOW,
    Check(lambda c, h: not c.get("mlp_only_layers") and int(c.get("decoder_sparse_step", 1)) == 1, "some layers are dense (mlp_only_layers or decoder_sparse_step), which llama.cpp's qwen3moe does not support"),
    Check(lambda c, h: bool(c.get("norm_topk_prob")), "norm_topk_prob is off, and llama.cpp always renormalises the chosen experts' weights"),
    Check(_experts_ok, f"num_experts / num_experts_per_tok / moe_intermediate_size are missing or out of range (1 to {LLAMA_MAX_EXPERTS} experts)"),
)


def _rope_skipped_every_fourth(c: Config, h: HParams) -> bool:
    """llama.cpp's smollm3 leaves out rope in every fourth layer, whatever the config says (no_rope_layers:
    1 = rope, 0 = none; without it transformers derives the list from no_rope_layer_interval)."""
    expected = [int((il + 1) % 4 != 0) for il in range(h.n_layers)]
    layers = c.get("no_rope_layers")
    if layers is None:
        return c.get("no_rope_layer_interval", 4) == 4
    return isinstance(layers, list) and all(isinstance(x, int) for x in layers) and layers == expected


SMOLLM3_CHECKS = (
    Check(_rope_skipped_every_fourth, "no_rope_layers is not every fourth layer without rope, the only pattern llama.cpp's smollm3 runs"),
    NO_SLIDING_WINDOW,
    Check(lambda c, h: all(t == "full_attention" for t in c.get("layer_types") or []), "layer_types has sliding-window layers, and llama.cpp's smollm3 attends fully"),
)
GEMMA4_CHECKS = (
    Check(lambda c, h: not c.get("enable_moe_block"), "its layers have experts (enable_moe_block), which this converter does not map yet"),
    Check(lambda c, h: not c.get("hidden_size_per_layer_input"), "it has per-layer input embeddings (hidden_size_per_layer_input), which this converter does not map yet"),
    Check(lambda c, h: not c.get("num_kv_shared_layers"), "layers share KV caches (num_kv_shared_layers), which this converter does not map yet"),
    Check(lambda c, h: c.get("attention_k_eq_v") or c.get("num_global_key_value_heads") is None,
          "num_global_key_value_heads is set without attention_k_eq_v: llama.cpp's converter would use it, transformers does not"),
    Check(lambda c, h: not c.get("use_double_wide_mlp"), "use_double_wide_mlp is set, which this converter does not map yet"),
    Check(lambda c, h: c.get("hidden_activation", "gelu_pytorch_tanh") == "gelu_pytorch_tanh", "hidden_activation is not gelu_pytorch_tanh, the only one llama.cpp's gemma4 applies"),
    Check(lambda c, h: not c.get("use_bidirectional_attention"), "use_bidirectional_attention is set, and llama.cpp's gemma4 attends causally"),
    Check(lambda c, h: h.rope["rope_type"] == "proportional" and KINDS["number"](h.rope.get("partial_rotary_factor")) and h.rope["partial_rotary_factor"] <= 1,
          "the global layers' rope is not proportional with a partial_rotary_factor up to 1, the only kind llama.cpp's gemma4 reads"),
    Check(lambda c, h: _swa_rope(c).get("rope_type", "default") == "default", "the sliding-window layers' rope is scaled, which llama.cpp's gemma4 does not apply"),
    Check(lambda c, h: bool(h.layer_attn) and all(a.head_dim == h.head_dim for a, swa in zip(h.layer_attn, sliding_layers(c, h.n_layers, 6)) if swa),
          "per_layer_config does not give the global layers' head size, or a sliding-window layer's head differs from head_dim"),
)


def _qwen35_linear_ok(c: Config, h: HParams) -> bool:
    s = h.ssm
    return (
        s is not None and min(s.n_k_heads, s.n_v_heads, s.head_k_dim, s.conv_kernel) > 0 and s.n_v_heads % s.n_k_heads == 0
        and len(h.recurrent) == h.n_layers and any(h.recurrent)
    )


def _known_layer_types(c: Config, h: HParams) -> bool:
    types = c.get("layer_types")
    return types is None or (isinstance(types, list) and len(types) == h.n_layers
                             and set(types) <= {"linear_attention", "full_attention"})


QWEN35_CHECKS = (
    Check(_known_layer_types, "layer_types must list linear_attention or full_attention for each layer"),
    Check(_qwen35_linear_ok, "the linear-attention shape is missing or inconsistent (value heads must be a multiple of key heads)"),
    # llama.cpp's gated delta net sizes keys and values by one state size
    Check(lambda c, h: h.ssm is not None and h.ssm.head_k_dim == h.ssm.head_v_dim, "linear_key_head_dim differs from linear_value_head_dim, which llama.cpp's qwen35 requires equal"),
    Check(lambda c, h: not c.get("attention_bias"), "attention_bias is set, and llama.cpp's qwen35 loads no attention biases"),
    Check(lambda c, h: c.get("hidden_act", "silu") == "silu", "hidden_act is not silu, the only activation llama.cpp's qwen35 runs"),
    Check(lambda c, h: h.rope["rope_type"] == "default", "rope scaling is set, and llama.cpp's qwen35 reads none"),
)
QWEN35MOE_CHECKS = QWEN35_CHECKS + (
    Check(_experts_ok, f"num_experts / num_experts_per_tok / moe_intermediate_size are missing or out of range (1 to {LLAMA_MAX_EXPERTS} experts)"),
    Check(lambda c, h: h.n_ff_shexp > 0, "shared_expert_intermediate_size is missing, and llama.cpp needs the shared expert"),
)
QWEN3NEXT_CHECKS = QWEN35MOE_CHECKS + QWEN3_MOE_CHECKS[1:3]  # every layer sparse, chosen experts renormalised
GPT_OSS_CHECKS = (
    Check(_experts_ok, f"num_local_experts / num_experts_per_tok are missing or out of range (1 to {LLAMA_MAX_EXPERTS} experts)"),
    Check(lambda c, h: c.get("swiglu_alpha", 1.702) == 1.702 and c.get("swiglu_limit", 7.0) == 7.0,
          "swiglu_alpha / swiglu_limit differ from the 1.702 / 7.0 llama.cpp's gpt-oss applies"),
    Check(lambda c, h: not h.tied_embeddings, "tie_word_embeddings is set, and llama.cpp's gpt-oss loads an output matrix of its own"),
    Check(lambda c, h: h.n_rot == h.head_dim, "part of each head is left unrotated, and llama.cpp's gpt-oss rotates whole heads"),
    Check(lambda c, h: c.get("layer_types") is None or (isinstance(c["layer_types"], list) and len(c["layer_types"]) == h.n_layers
                                                      and all(t in ("sliding_attention", "full_attention") for t in c["layer_types"])),
          "layer_types must list sliding_attention or full_attention for each layer"),
    Check(lambda c, h: not h.mxfp4 or (h.n_embd % MXFP4_BLOCK == 0 and h.n_ff_exp % MXFP4_BLOCK == 0),
          f"the MXFP4 experts' widths are not multiples of {MXFP4_BLOCK}"),
)


def _known_types(*known: str) -> Callable[[Config, HParams], bool]:
    def ok(c: Config, h: HParams) -> bool:
        types = c.get("layer_types")
        return types is None or (isinstance(types, list) and len(types) == h.n_layers and set(types) <= set(known))

    return ok


LFM2_CHECKS = (
    Check(_known_types("conv", "full_attention"), "layer_types must list conv or full_attention for each layer"),
    Check(lambda c, h: not c.get("conv_bias"), "conv_bias is set, and llama.cpp's lfm2 loads no convolution biases"),
    Check(lambda c, h: h.conv_cache > 1, "conv_L_cache is missing or below 2"),
    Check(lambda c, h: h.rope["rope_type"] == "default", "rope scaling is set, and llama.cpp's lfm2 reads none"),
)


def _mamba_ok(c: Config, h: HParams) -> bool:
    m = h.mamba
    return (
        m is not None and min(m.n_heads, m.d_head, m.d_state, m.n_groups, m.d_conv) > 0 and m.n_heads * m.d_head == m.d_inner
        and m.d_inner % m.n_groups == 0 and m.n_heads % m.n_groups == 0
    )


def _no_time_step_clamp(c: Config, h: HParams) -> bool:
    """transformers clamps each Mamba2 step size to time_step_limit; llama.cpp clamps none, which is the same
    only for the default (0, infinity) (saved as JSON's Infinity, or transformers 5's {"__float__": "Infinity"})."""
    limit = c.get("time_step_limit")
    if limit is None:
        return True
    if not (isinstance(limit, list) and len(limit) == 2):
        return False
    return limit[0] == 0 and (limit[1] == math.inf or limit[1] == {"__float__": "Infinity"})


GRANITE_HYBRID_CHECKS = (
    Check(_known_types("mamba", "attention", "linear_attention", "full_attention"),
          "layer_types must list mamba or attention for each layer"),
    Check(lambda c, h: any(h.recurrent), "no layer is a Mamba2 layer, and llama.cpp converts such a model as another architecture"),
    Check(_mamba_ok, "the Mamba2 shape is missing or inconsistent (mamba_n_heads x mamba_d_head must be mamba_expand x hidden_size)"),
    Check(lambda c, h: c.get("position_embedding_type") != "rope", "position_embedding_type is rope, and llama.cpp's granitehybrid applies none"),
    Check(lambda c, h: not c.get("attention_bias") and not c.get("mamba_proj_bias"), "attention_bias or mamba_proj_bias is set, and llama.cpp's granitehybrid loads no such biases"),
    Check(lambda c, h: c.get("hidden_act", "silu") == "silu", "hidden_act is not silu, the only activation llama.cpp's granitehybrid runs"),
    Check(_no_time_step_clamp, "time_step_limit bounds the Mamba2 step size, and llama.cpp's granitehybrid does not"),
    Check(lambda c, h: not h.n_expert or _experts_ok(c, h), f"num_local_experts / num_experts_per_tok are out of range (1 to {LLAMA_MAX_EXPERTS} experts)"),
    Check(lambda c, h: h.n_ff_shexp > 0, "shared_intermediate_size is missing: every layer has a shared MLP"),
    Check(lambda c, h: h.n_expert or h.n_ff == h.n_ff_shexp, "intermediate_size differs from shared_intermediate_size in a dense model, and llama.cpp sizes its MLP by the first"),
)
MIXTRAL_CHECKS = (Check(_experts_ok, f"num_local_experts / num_experts_per_tok are missing or out of range (1 to {LLAMA_MAX_EXPERTS} experts)"),)


@dataclass(frozen=True)
class ArchSpec:
    hf_arch: str
    model_type: str  # config.json's model_type, for configs that do not list `architectures`
    gguf_arch: str  # llama.cpp's architecture name (general.architecture and key prefix)
    tensors: tuple[TensorSpec, ...]
    permute_qk: bool  # HF stores Q/K rows in rotate-half order; llama.cpp's "llama" rope wants interleaved pairs
    rope_factors: str | None = None  # rope_type whose per-frequency factors travel as tensors ("llama3", "longrope", "proportional")
    norm_shift: float = 0.0  # added to every norm weight (Gemma stores w - 1 and computes x * (1 + w))
    ignored: re.Pattern | None = None  # more HF tensors llama.cpp does not use for this architecture
    metadata: tuple[MetaKey, ...] = ()
    checks: tuple[Check, ...] = field(default=())
    tokenizer: str | None = None  # a tokenizer kind of its own in llama.cpp ("gemma4"); None: chosen by the files
    kv_heads_per_layer: bool = False  # KV heads written per layer, 0 in recurrent layers (llama.cpp tells them apart so)


# Qwen3.5's multi-token-prediction block: llama.cpp runs the model without it (its converter's --no-mtp).
QWEN35_IGNORED = re.compile(r"^(model\.)?mtp\.")

# Gemma's output reuses the embeddings; llama.cpp's converter drops an lm_head some exporters add.
GEMMA_IGNORED = re.compile(r"^lm_head\.weight$")

ARCHS: dict[str, ArchSpec] = {
    a.hf_arch: a
    for a in (
        # Llama checkpoints may carry attention biases (config attention_bias=true).
        ArchSpec("LlamaForCausalLM", "llama", "llama", LLAMA_TENSORS + _attn_biases(True), permute_qk=True, rope_factors="llama3"),
        ArchSpec("MistralForCausalLM", "mistral", "llama", LLAMA_TENSORS + _attn_biases(True), permute_qk=True, rope_factors="llama3"),
        # Qwen uses NEOX-style rope in llama.cpp (no reordering); Qwen2 always has q/k/v biases.
        ArchSpec("Qwen2ForCausalLM", "qwen2", "qwen2", LLAMA_TENSORS + _attn_biases(False), permute_qk=False),
        ArchSpec("Qwen3ForCausalLM", "qwen3", "qwen3", LLAMA_TENSORS + QK_NORMS + _attn_biases(True), permute_qk=False, checks=(NO_SLIDING_WINDOW,)),
        ArchSpec(
            "Qwen3MoeForCausalLM", "qwen3_moe", "qwen3moe",
            EMBEDDINGS + OUTPUT + ATTN_NORM + ATTENTION + QK_NORMS + FFN_NORM + QWEN_MOE_EXPERTS + _attn_biases(True),
            permute_qk=False, metadata=(EXPERT_FF,), checks=QWEN3_MOE_CHECKS,
        ),
        ArchSpec(
            "Gemma2ForCausalLM", "gemma2", "gemma2", GEMMA_TENSORS, permute_qk=False, norm_shift=1.0, ignored=GEMMA_IGNORED,
            metadata=GEMMA2_KEYS, checks=(_gemma_query_scale(46),),
        ),
        ArchSpec(
            "Gemma3ForCausalLM", "gemma3_text", "gemma3", GEMMA_TENSORS + QK_NORMS, permute_qk=False, norm_shift=1.0,
            ignored=GEMMA_IGNORED, metadata=GEMMA3_KEYS,
            checks=(_gemma_query_scale(62), Check(lambda c, h: c.get("attn_logit_softcapping") is None, "attn_logit_softcapping is set, which Gemma 3 in llama.cpp does not apply")),
        ),
        # Gemma 4 norms multiply by the weight itself (no stored w - 1); each layer's output is scaled by a scalar.
        ArchSpec(
            "Gemma4ForCausalLM", "gemma4_text", "gemma4",
            GEMMA_TENSORS + QK_NORMS + (TensorSpec("model.layers.{bid}.layer_scalar", "blk.{bid}.layer_output_scale.weight", lambda h: (1,)),),
            permute_qk=False, rope_factors="proportional", ignored=GEMMA_IGNORED, metadata=GEMMA4_KEYS, checks=GEMMA4_CHECKS, tokenizer="gemma4",
        ),
        ArchSpec("Phi3ForCausalLM", "phi3", "phi3", PHI3_TENSORS, permute_qk=False, rope_factors="longrope", metadata=PHI3_KEYS),
        # SmolLM3: Llama with rope left out of every fourth layer (llama.cpp loads q/k/v biases, not an output one).
        ArchSpec(
            "SmolLM3ForCausalLM", "smollm3", "smollm3", LLAMA_TENSORS + _attn_biases(True)[:3], permute_qk=True, rope_factors="llama3",
            checks=SMOLLM3_CHECKS,
        ),
        # Mixtral is llama.cpp's "llama" with experts in place of the MLP.
        ArchSpec(
            "MixtralForCausalLM", "mixtral", "llama", EMBEDDINGS + OUTPUT + ATTN_NORM + ATTENTION + FFN_NORM + MIXTRAL_EXPERTS,
            permute_qk=True, checks=MIXTRAL_CHECKS,
        ),
        # GPT-OSS: MoE with MXFP4 experts, attention sinks, every other layer attending through a sliding window.
        ArchSpec(
            "GptOssForCausalLM", "gpt_oss", "gpt-oss", GPT_OSS_TENSORS, permute_qk=False, metadata=GPT_OSS_KEYS, checks=GPT_OSS_CHECKS,
        ),
        # Qwen3.5 (text): gated delta net layers with a full-attention layer every few; norms store w - 1.
        ArchSpec(
            "Qwen3_5ForCausalLM", "qwen3_5_text", "qwen35", QWEN35_TENSORS, permute_qk=False, norm_shift=1.0,
            ignored=QWEN35_IGNORED, metadata=QWEN35_KEYS, checks=QWEN35_CHECKS,
        ),
        # Qwen3-Next: Qwen3.5-MoE's layers before Qwen3.5 (fused projections, value heads left grouped).
        ArchSpec(
            "Qwen3NextForCausalLM", "qwen3_next", "qwen3next",
            QWEN35_NORMS + QWEN3NEXT_LINEAR + QWEN35_ATTENTION + QWEN_MOE_EXPERTS + SHARED_EXPERT,
            permute_qk=False, norm_shift=1.0, ignored=QWEN35_IGNORED, metadata=QWEN3NEXT_KEYS, checks=QWEN3NEXT_CHECKS,
        ),
        # Qwen3.5-MoE: the same layers with routed experts and a gated shared expert in place of the MLP.
        ArchSpec(
            "Qwen3_5MoeForCausalLM", "qwen3_5_moe_text", "qwen35moe", QWEN35_LAYERS + QWEN_MOE_EXPERTS + SHARED_EXPERT,
            permute_qk=False, norm_shift=1.0, ignored=QWEN35_IGNORED, metadata=QWEN35MOE_KEYS, checks=QWEN35MOE_CHECKS,
        ),
        # LFM2: short convolutions with a few attention layers between them.
        ArchSpec(
            "Lfm2ForCausalLM", "lfm2", "lfm2", LFM2_TENSORS, permute_qk=False, metadata=LFM2_KEYS, checks=LFM2_CHECKS,
            kv_heads_per_layer=True,
        ),
        # Granite 4 hybrids: Mamba2 layers and attention layers without rope; dense or with experts.
        ArchSpec(
            "GraniteMoeHybridForCausalLM", "granitemoehybrid", "granitehybrid", GRANITE_HYBRID_TENSORS, permute_qk=True,
            metadata=GRANITE_HYBRID_KEYS, checks=GRANITE_HYBRID_CHECKS, kv_heads_per_layer=True,
        ),
    )
}


@dataclass(frozen=True)
class TextPart:
    """A multimodal class whose text model converts as a text-only class, as llama.cpp's converter converts it
    (the image encoder goes to a separate projector file: quantize.projector)."""

    text_arch: str  # the text-only class it is converted as
    prefixes: tuple[str, ...]  # where the text-only class has "model.", the text model's tensors have one of these
    skipped: re.Pattern  # the other modalities' tensors
    defaults: dict[str, Any] = field(default_factory=dict)  # text settings the class's configs may leave out


# Gemma 3's hub configs leave the 4B model's values out of text_config (transformers' Gemma3TextConfig defaults).
GEMMA3_TEXT_DEFAULTS = {
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
    "vocab_size": 262208, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0, "sliding_window": 4096, "sliding_window_pattern": 6,
}

TEXT_PARTS = {
    "Gemma4ForConditionalGeneration": TextPart(
        "Gemma4ForCausalLM", ("model.language_model.",), re.compile(r"^model\.(vision_tower|embed_vision|audio_tower|embed_audio)\.")
    ),
    # Google's repos name the text model language_model.model.*; transformers 4.52+ saves model.language_model.*
    "Gemma3ForConditionalGeneration": TextPart(
        "Gemma3ForCausalLM", ("language_model.model.", "model.language_model."),
        re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\."), GEMMA3_TEXT_DEFAULTS,
    ),
    # SmolVLM and Idefics3: a Llama text model beside the image encoder
    **{arch: TextPart("LlamaForCausalLM", ("model.text_model.",), re.compile(r"^model\.(vision_model|connector)\."))
       for arch in ("SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration")},
}
SUB_CONFIGS = ("text_config", "vision_config", "audio_config")


def text_part(config: Config, names: list[str]) -> tuple[Config, dict[str, str]] | None:
    """For a multimodal checkpoint with a convertible text model: its config as the text-only class has it
    (text_config over the shared fields) and its tensors' names (text-only name -> stored name); else None."""
    part = TEXT_PARTS.get((config.get("architectures") or [None])[0])
    if part is None:
        return None
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise EdgeError("config.json lacks the text model's settings (text_config)")
    shared = {k: v for k, v in config.items() if k not in SUB_CONFIGS}
    merged = part.defaults | shared | text | {"architectures": [part.text_arch]}
    renamed = {}
    for name in names:
        if part.skipped.search(name):
            continue
        prefix = next((p for p in part.prefixes if name.startswith(p)), None)
        renamed["model." + name.removeprefix(prefix) if prefix else name] = name
    return merged, renamed


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


def metadata_values(arch: ArchSpec, config: Config, h: HParams) -> list[tuple[str, Any]]:
    """(GGUFWriter method, value) of the architecture's extra keys; EdgeError for a value of the wrong kind."""
    out = []
    for key in arch.metadata:
        value = key.value(config, h)
        if value is None:
            continue
        if not KINDS[key.kind](value):
            raise EdgeError(f"config.json has a bad value for {key.writer.removeprefix('add_')}: {value!r}")
        out.append((key.writer, value))
    return out


def check_config(arch: ArchSpec, config: Config, h: HParams) -> None:
    """EdgeError for a config llama.cpp would not run as transformers does."""
    for check in arch.checks:
        if not check.ok(config, h):
            raise EdgeError(f"cannot convert this {arch.hf_arch} faithfully: {check.problem}")


@dataclass(frozen=True)
class PlannedTensor:
    hf: tuple[str, ...]  # source tensors, concatenated along their first axis (one per expert when stacked)
    gguf: str
    shape: tuple[int, ...]  # HF row-major shape of the GGUF tensor
    permute: str | None
    shift: float = 0.0  # added to every value
    keep_f32: bool = False
    reorder: str | None = None
    values: str | None = None
    experts: str | None = None  # an EXPERT_LAYOUTS entry


# Tensors a model has or lacks by its kind, where one HF class makes both kinds (Granite 4 hybrids).
WHEN: dict[str, Callable[[HParams], bool]] = {"experts": lambda h: h.n_expert > 0, "dense": lambda h: h.n_expert == 0}


def _spec_layers(spec: TensorSpec, h: HParams) -> range | list:
    if spec.when and not WHEN[spec.when](h):
        return []
    if "{bid}" not in spec.hf:
        return [None]
    if spec.layers:
        want = spec.layers == "recurrent"
        return [il for il in range(h.n_layers) if (h.recurrent[il] if h.recurrent else False) == want]
    return range(h.n_layers)


def _unit_free(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def plan_tensors(arch: ArchSpec, h: HParams, present: dict[str, tuple[int, ...]]) -> list[PlannedTensor]:
    """Match the checkpoint's tensors (name -> shape) to the arch table; EdgeError on missing/extra/misshapen."""
    out: list[PlannedTensor] = []
    used: set[str] = set()
    for spec in arch.tensors:
        layers = _spec_layers(spec, h)
        stacked = "{xid}" in spec.hf
        if spec.stored and spec.stored != ("mxfp4" if h.mxfp4 else "plain"):
            continue
        layout = EXPERT_LAYOUTS[spec.experts] if spec.experts else None
        for bid in layers:
            if spec.absent_if_k_is_v and h.at_layer(bid).k_is_v:
                continue  # a v_proj there is left over as extra
            layer = h.at_layer(bid)
            want = spec.shape(layer)
            source = spec.hf_shape(layer) if spec.hf_shape else want
            names = [spec.hf.format(bid=bid, xid=x) for x in range(want[0])] if stacked else [spec.hf.format(bid=bid)]
            part = source[1:] if stacked else source
            missing = [n for n in names if n not in present]
            if missing:
                if spec.optional or (spec.untied_only and h.tied_embeddings):
                    continue
                raise EdgeError(f"checkpoint lacks tensor {missing[0]} that {arch.hf_arch} needs")
            shapes = dict.fromkeys(names, part)
            if layout and layout.mxfp4:
                shapes[layout.scales_name(names[0])] = part[:-1]
            for n, expected in shapes.items():
                if n not in present:
                    raise EdgeError(f"checkpoint lacks tensor {n} that {arch.hf_arch} needs")
                # a unit axis is no difference in the data (a depthwise conv's kernel is stored (channels, 1, k))
                if tuple(present[n]) != expected and _unit_free(tuple(present[n])) != _unit_free(expected):
                    raise EdgeError(f"tensor {n} has shape {list(present[n])} but config.json implies {list(expected)}")
            used.update(shapes)
            shift = arch.norm_shift if spec.gguf.endswith("norm.weight") and spec.shifted else 0.0
            out.append(PlannedTensor(
                tuple(names), spec.gguf.format(bid=bid), want, spec.permute if arch.permute_qk else None, shift, spec.keep_f32,
                spec.reorder, spec.values, spec.experts,
            ))
    ignored = [IGNORED] + ([arch.ignored] if arch.ignored else [])
    extra = sorted(n for n in present if n not in used and not any(p.search(n) for p in ignored))
    if extra:
        raise EdgeError(f"checkpoint has tensor(s) {arch.hf_arch} does not use: {', '.join(extra[:5])}")
    return out


def weight_map(arch: ArchSpec, h: HParams) -> dict[str, PlannedTensor]:
    """Every single-source HF matrix the arch table knows for this shape (stacked experts left out), by HF
    name: its GGUF tensor, shape and row reordering. Adapters name the matrices they change this way."""
    out: dict[str, PlannedTensor] = {}
    for spec in arch.tensors:
        want = spec.shape(h)
        # matrices whose heads move are left out: an adapter's low-rank factors would need the same moves
        if "{xid}" in spec.hf or len(want) != 2 or (spec.untied_only and h.tied_embeddings) or spec.reorder or spec.experts:
            continue
        for bid in _spec_layers(spec, h):
            name = spec.hf.format(bid=bid)
            if spec.absent_if_k_is_v and h.at_layer(bid).k_is_v:
                continue
            want = spec.shape(h.at_layer(bid))
            out[name] = PlannedTensor((name,), spec.gguf.format(bid=bid), want, spec.permute if arch.permute_qk else None)
    return out


def permute_groups(permute: str | None, h: HParams) -> int:
    """Head groups whose rows llama.cpp's rope wants reordered: Q has n_head of them, K n_head_kv (0: none)."""
    return {"q": h.n_head, "k": h.n_head_kv}.get(permute or "", 0)


def permute_rows(rows, groups: int):
    """HF keeps each head's rope pairs as two halves; llama.cpp wants them interleaved (rows of a 2-D array)."""
    n, cols = rows.shape
    return rows.reshape(groups, 2, n // groups // 2, cols).swapaxes(1, 2).reshape(n, cols)
