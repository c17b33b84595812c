"""Hyper-parameters a GGUF header can hold that no model has: refused before llama.cpp sees them.

llama.cpp trusts a model file's header. A layer count of 0, a NaN norm epsilon or more experts used
than there are end in a GGML_ASSERT that aborts the whole process (in the chat, it leaves the terminal
in raw mode); other impossible values make the planner's numbers nonsense. `check` turns each into one
line naming the file, the key and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import EdgeError
from .gguf_info import GGUFInfo

LLAMA_MAX_LAYERS = 512  # llama.cpp asserts 0 < block_count <= this
LLAMA_MAX_EXPERTS = 1024  # and expert_count <= this
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # any other name is an assert


@dataclass(frozen=True)
class Bound:
    """`<arch>.<key>`: a finite number from low to high; per_layer: or a list of them, one per layer."""

    key: str
    low: int
    high: int
    required: bool = False
    per_layer: bool = False


BOUNDS = (
    Bound("block_count", 1, LLAMA_MAX_LAYERS, required=True),
    Bound("context_length", 1, 1 << 26, required=True),  # the longest published context is 10M tokens
    Bound("embedding_length", 1, 1 << 20, required=True),  # the widest published models are 16k to 32k
    Bound("vocab_size", 1, 1 << 24),  # the largest vocabularies hold 262k tokens
    Bound("attention.head_count", 0, 1 << 14, per_layer=True),  # 0: a layer without attention (Mamba, hybrids)
    Bound("attention.head_count_kv", 0, 1 << 14, per_layer=True),
    Bound("attention.key_length", 1, 1 << 16),
    Bound("attention.value_length", 1, 1 << 16),
    Bound("expert_count", 0, LLAMA_MAX_EXPERTS),
    Bound("expert_used_count", 0, LLAMA_MAX_EXPERTS, per_layer=True),
    Bound("attention.layer_norm_rms_epsilon", 0, 1),
    Bound("attention.layer_norm_epsilon", 0, 1),
)


class Impossible(Exception):
    """One impossible value: the key, what it holds, what it should."""

    def __init__(self, key: str, value: Any, want: str) -> None:
        super().__init__(f"{key} = {value!r} ({want})")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bound(info: GGUFInfo, b: Bound) -> None:
    """The value is there if it must be, and a number (or numbers) within the bound."""
    key = f"{info.arch}.{b.key}"
    if key not in info.metadata:
        if b.required:
            raise Impossible(key, None, "missing: every model has one")
        return
    value = info.metadata[key]
    items = value if b.per_layer and isinstance(value, list) else [value]
    want = f"must be {b.low} to {b.high}" + (", or one such number per layer" if b.per_layer else "")
    if not items or not all(_number(v) and math.isfinite(v) and b.low <= v <= b.high for v in items):
        raise Impossible(key, value, want)
    if b.per_layer and isinstance(value, list) and len(value) != info.n_layers:
        raise Impossible(key, value, f"must have one value per layer, {info.n_layers}")


def _architecture(info: GGUFInfo) -> None:
    if not isinstance(info.metadata.get("general.architecture"), str):
        raise Impossible("general.architecture", info.metadata.get("general.architecture"), "missing: every model has one")


def _per_layer(info: GGUFInfo, suffix: str, default: Any = 0) -> list:
    value = info.metadata.get(f"{info.arch}.{suffix}", default)
    return value if isinstance(value, list) else [value] * info.n_layers


def _experts(info: GGUFInfo) -> None:
    n_expert = info.metadata.get(f"{info.arch}.expert_count", 0)
    used = max(_per_layer(info, "expert_used_count"), default=0)
    if used > n_expert:
        raise Impossible(f"{info.arch}.expert_used_count", used, f"must be at most expert_count, {n_expert}")
    if n_expert and not used:
        raise Impossible(f"{info.arch}.expert_used_count", used, f"must be at least 1 of the {n_expert} experts")


ATTENTION_TENSORS = ("attn_q.weight", "attn_qkv.weight")


def _heads(info: GGUFInfo) -> None:
    """Each layer with attention has heads, and its key/value heads divide them (grouped-query attention);
    without a key_length, the head size is the embedding length divided by the heads."""
    with_attention = {t.layer for t in info.tensors if t.layer is not None and t.name.endswith(ATTENTION_TENSORS)}
    heads, kv_heads = _per_layer(info, "attention.head_count"), _per_layer(info, "attention.head_count_kv", None)
    derived_head_size = f"{info.arch}.attention.key_length" not in info.metadata
    for layer in sorted(with_attention):
        if layer >= info.n_layers:
            continue
        n_head = heads[layer]
        n_kv = n_head if kv_heads[layer] is None else kv_heads[layer]
        if n_head < 1:
            raise Impossible(f"{info.arch}.attention.head_count", n_head, f"must be at least 1: layer {layer} has attention")
        if derived_head_size and info.n_embd % n_head:
            raise Impossible(f"{info.arch}.attention.head_count", n_head, f"must divide embedding_length, {info.n_embd}")
        if n_kv < 1 or n_head % n_kv:
            raise Impossible(f"{info.arch}.attention.head_count_kv", n_kv, f"must divide head_count, {n_head}")


def _rope_scaling(info: GGUFInfo) -> None:
    key = f"{info.arch}.rope.scaling.type"
    if key in info.metadata and info.metadata[key] not in ROPE_SCALING_TYPES:
        raise Impossible(key, info.metadata[key], "must be one of " + ", ".join(ROPE_SCALING_TYPES))


# In this order: the relations between values assume each value is within its bound.
RULES = (_architecture, *(partial(_bound, b=b) for b in BOUNDS), _experts, _heads, _rope_scaling)


def check(info: GGUFInfo) -> GGUFInfo:
    """`info` unchanged, or EdgeError naming the file, the key and its value if no model could have it."""
    try:
        for rule in RULES:
            rule(info)
    except Impossible as exc:
        raise EdgeError(f"{info.path}: impossible header value {exc}; the file is damaged or was written wrong") from None
    return info
