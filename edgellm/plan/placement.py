"""Where llama.cpp puts tensors beyond its layer split: the experts of the first layers in RAM.

llama.cpp matches each tensor's name against `llama_model_params.tensor_buft_overrides` (regular
expressions, searched, first match wins) while it loads the model; a match on the CPU buffer type keeps
the tensor in RAM even when its layer is offloaded. This is what its `--n-cpu-moe N` does.
"""

from __future__ import annotations

import ctypes

from .memory import EXPERT_TENSOR


class TensorBuftOverride(ctypes.Structure):
    """llama.h's `struct llama_model_tensor_buft_override`."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def expert_patterns(n_layers: int) -> list[str]:
    """One pattern per layer whose experts stay in RAM: layers 0 .. n_layers-1."""
    return [rf"blk\.{i}{EXPERT_TENSOR.pattern}" for i in range(n_layers)]


def _cpu_buffer_type() -> int:
    from ..engine.llamacpp import ggml_library

    fn = ggml_library("ggml-base").ggml_backend_cpu_buffer_type
    fn.restype = ctypes.c_void_p
    return fn()


def cpu_experts(n_layers: int) -> ctypes.Array | None:
    """The NULL-terminated override list keeping the experts of the first `n_layers` layers in RAM (None
    for none). The caller keeps it alive until the model is loaded."""
    if n_layers <= 0:
        return None
    buft = _cpu_buffer_type()
    patterns = expert_patterns(n_layers)
    arr = (TensorBuftOverride * (len(patterns) + 1))()
    for i, p in enumerate(patterns):
        arr[i] = TensorBuftOverride(p.encode(), buft)
    return arr  # the last entry stays zeroed: pattern NULL ends the list
