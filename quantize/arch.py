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
        n_rot = head_dim if partial == 1.0 else int(partial * n_embd) // n_head
        if rope["rope_type"] == "proportional":  # unrotated dimensions travel as infinite-wavelength factors
            n_rot = max((a.head_dim for a in layer_attn), default=head_dim)
        return HParams(
            n_layers=n_layers,
            n_embd=n_embd,
            n_ff=int(config["intermediate_size"]),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ctx=int(config.get("max_position_embeddings", 4096)),
            n_vocab=int(config["vocab_size"]),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope["rope_theta"]),
            rope=rope,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            has_head_dim=config.get("head_dim") is not None,
            # llama.cpp counts rotated dimensions from the model width, as Phi's configs define them
            n_rot=n_rot,
            n_expert=n_expert,
            n_expert_used=int(config.get("num_experts_per_tok") or 0) if n_expert else 0,
            n_ff_exp=int(config.get("moe_intermediate_size") or config["intermediate_size"]) if n_expert else 0,
            layer_attn=layer_attn,
            kv_by_layer=any("num_key_value_heads" in (o or {}) for o in _layer_overrides(config, n_layers).values()),
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


# HF tensors that hold nothing llama.cpp needs (precomputed rope tables).
IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")


# --- metadata beyond the common keys -------------------------------------------------------------------

Config = dict[str, Any]


# What a metadata value must be before it reaches the file (config.json is untrusted input).
KINDS: dict[str, Callable[[Any], bool]] = {
    "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 32,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
    "flags": lambda v: isinstance(v, list) and all(isinstance(x, bool) for x in v),
}


@dataclass(frozen=True)
class MetaKey:
    """One extra GGUF key: the GGUFWriter method that writes it, its value (None: not written) and its kind."""

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


def plan_tensors(arch: ArchSpec, h: HParams, present: dict[str, tuple[int, ...]]) -> list[PlannedTensor]:
    """Match the checkpoint's tensors (name -> shape) to the arch table; EdgeError on missing/extra/misshapen."""
    out: list[PlannedTensor] = []
    used: set[str] = set()
    for spec in arch.tensors:
        layers = range(h.n_layers) if "{bid}" in spec.hf else [None]
        stacked = "{xid}" in spec.hf
        for bid in layers:
            if spec.absent_if_k_is_v and h.at_layer(bid).k_is_v:
                continue  # a v_proj there is left over as extra
            want = spec.shape(h.at_layer(bid))
            names = [spec.hf.format(bid=bid, xid=x) for x in range(want[0])] if stacked else [spec.hf.format(bid=bid)]
            part = want[1:] if stacked else want
            missing = [n for n in names if n not in present]
            if missing:
                if spec.optional or (spec.untied_only and h.tied_embeddings):
                    continue
                raise EdgeError(f"checkpoint lacks tensor {missing[0]} that {arch.hf_arch} needs")
            for n in names:
                if tuple(present[n]) != part:
                    raise EdgeError(f"tensor {n} has shape {list(present[n])} but config.json implies {list(part)}")
            used.update(names)
            shift = arch.norm_shift if spec.gguf.endswith("norm.weight") else 0.0
            out.append(
                PlannedTensor(tuple(names), spec.gguf.format(bid=bid), want, spec.permute if arch.permute_qk else None, shift, spec.keep_f32)
            )
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
        if "{xid}" in spec.hf or len(want) != 2 or (spec.untied_only and h.tied_embeddings):
            continue
        for bid in range(h.n_layers) if "{bid}" in spec.hf else [None]:
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
