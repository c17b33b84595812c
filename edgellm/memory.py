"""How much RAM and VRAM a GGUF needs at a given context, KV cache type and number of GPU layers.

Everything comes from the file's header (tensor sizes, shape) and follows llama.cpp's own rules:

- weights: layer `blk.i` goes to the GPU when i >= n_layer - n_gpu_layers; the output layer (output norm
  + output matrix, or a GPU copy of the tied embeddings) only when n_gpu_layers > n_layer; the token
  embeddings always stay on the CPU. CPU weights are memory-mapped from the file.
- KV cache: n_ctx (rounded up to 256 cells) x each layer's K and V rows, on the device of its layer.
- compute buffer (flash attention, which llama.cpp's "auto" turns on for CPU and CUDA): the logits of a
  full micro-batch plus two activations, n_ubatch * (n_vocab + 2 n_embd) floats, on the device that holds
  the output layer. Layers on the other device need their own activations.
- output buffer: one row of logits.

Checked against llama.cpp's own accounting (a no-alloc dry run, `llama_dry_run` below) in the tests.

llama.cpp reserves the whole CPU compute buffer, but the runtime asks for one row of logits per batch, so
only the activations part is ever touched; RAM use (what peak RSS shows) counts that part, VRAM (where a
reservation is a real allocation) counts all of it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .gguf_info import GGUFInfo

MIB = 1 << 20
KV_CELL_PAD = 256  # llama.cpp rounds the KV cache up to a multiple of this many cells
N_UBATCH = 512  # micro-batch the runtime uses (llama.cpp's default)
RUNTIME_OVERHEAD = 72 * MIB  # the Python process, llama.cpp's libraries and small buffers (measured: 47-56 MiB + batch arrays)
GPU_HOST_BUFFERS = 3  # activations kept in host memory under full offload, in n_ubatch x n_embd floats
KV_TYPE_SIZES = {"f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}  # ggml (block size, bytes per block)


def _row_bytes(kv_type: str, n: int) -> int:
    block, size = KV_TYPE_SIZES[kv_type]
    return n // block * size


def kv_cells(n_ctx: int) -> int:
    return -(-n_ctx // KV_CELL_PAD) * KV_CELL_PAD


@dataclass(frozen=True)
class MemoryEstimate:
    n_ctx: int
    kv_type: str
    n_gpu_layers: int  # 0 .. n_layer + 1 (the extra one is the output layer)
    weights_cpu: int
    weights_gpu: int
    kv_cpu: int
    kv_gpu: int
    compute_cpu: int  # reserved by llama.cpp
    compute_cpu_touched: int  # the part of it a batch with one output row ever touches
    compute_gpu: int
    output: int
    overhead: int

    @property
    def ram(self) -> int:
        """Resident memory of the process once loaded and generating."""
        return self.weights_cpu + self.kv_cpu + self.compute_cpu_touched + self.output + self.overhead

    @property
    def vram(self) -> int:
        return self.weights_gpu + self.kv_gpu + self.compute_gpu

    @property
    def llama_total(self) -> int:
        """What llama.cpp itself accounts for (all devices, reserved buffers, no process overhead)."""
        return self.weights_cpu + self.weights_gpu + self.kv_cpu + self.kv_gpu + self.compute_cpu + self.compute_gpu + self.output

    def to_dict(self) -> dict:
        return {**asdict(self), "ram": self.ram, "vram": self.vram}


def kv_bytes_per_cell(info: GGUFInfo, kv_type: str) -> int:
    """K + V bytes one token takes in one layer."""
    n_kv = info.n_head_kv
    return _row_bytes(kv_type, info.head_dim_k * n_kv) + _row_bytes(kv_type, info.head_dim_v * n_kv)


def _output_bytes(info: GGUFInfo) -> int:
    """Weights of the output layer: output norm + output matrix (or the tied token embeddings)."""
    by_name = {t.name: t.n_bytes for t in info.tensors}
    out = by_name.get("output_norm.weight", 0)
    return out + by_name.get("output.weight", by_name.get("token_embd.weight", 0))


def estimate(info: GGUFInfo, n_ctx: int, n_gpu_layers: int = 0, kv_type: str = "f16", n_ubatch: int = N_UBATCH) -> MemoryEstimate:
    n_layer = info.n_layers
    ngl = max(0, min(n_gpu_layers, n_layer + 1))
    first_gpu = n_layer - min(ngl, n_layer)
    output_on_gpu = ngl > n_layer

    layer_bytes = info.layer_bytes()
    w_gpu = sum(layer_bytes[first_gpu:])
    w_cpu = sum(layer_bytes[:first_gpu]) + info.non_layer_bytes
    if output_on_gpu:
        out = _output_bytes(info)
        if any(t.name == "output.weight" for t in info.tensors):
            w_cpu -= out  # moved
        else:
            w_cpu -= out - sum(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")  # norm moved, copy made
        w_gpu += out

    kv_layer = kv_cells(n_ctx) * kv_bytes_per_cell(info, kv_type)
    kv_gpu = kv_layer * (n_layer - first_gpu)
    kv_cpu = kv_layer * first_gpu

    f32 = 4
    logits = n_ubatch * info.n_vocab * f32
    acts = 2 * n_ubatch * info.n_embd * f32
    n_ff = int(info.metadata.get(f"{info.arch}.feed_forward_length", 4 * info.n_embd) or 4 * info.n_embd)
    layer_acts = n_ubatch * (2 * n_ff + 3 * info.n_embd) * f32  # one layer's peak without the logits
    if output_on_gpu:
        compute_gpu, compute_cpu = logits + acts, GPU_HOST_BUFFERS * n_ubatch * info.n_embd * f32
        touched = compute_cpu
    else:
        compute_gpu = layer_acts if ngl else 0
        compute_cpu = logits + acts
        touched = max(acts, layer_acts) + n_ubatch * f32 * info.n_embd  # + the embeddings of the batch
    return MemoryEstimate(
        n_ctx=n_ctx,
        kv_type=kv_type,
        n_gpu_layers=ngl,
        weights_cpu=w_cpu,
        weights_gpu=w_gpu,
        kv_cpu=kv_cpu,
        kv_gpu=kv_gpu,
        compute_cpu=compute_cpu,
        compute_cpu_touched=min(touched, compute_cpu),
        compute_gpu=compute_gpu,
        output=info.n_vocab * f32,
        overhead=RUNTIME_OVERHEAD,
    )


# --- llama.cpp's own accounting ------------------------------------------------------------------


@dataclass(frozen=True)
class DryRun:
    """Buffer sizes llama.cpp reports for a load that allocates nothing."""

    weights: int  # llama_model_size
    kv: int
    compute: dict[str, int]  # backend buffer name -> bytes
    output: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + sum(self.compute.values()) + self.output


_KV_SIZE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"(\S+) compute buffer size =\s*([\d.]+) MiB")
_OUTPUT = re.compile(r"(\S+)\s+output buffer size =\s*([\d.]+) MiB")


def llama_dry_run(path: str | Path, n_ctx: int, kv_type: str = "f16", n_gpu_layers: int = 0, n_ubatch: int = N_UBATCH) -> DryRun:
    """Ask llama.cpp what it would allocate (no_alloc + no mmap: nothing is read or allocated)."""
    import llama_cpp as L

    from . import llamacpp
    from .errors import EdgeError

    with llamacpp.capture_log() as lines:
        mp = L.llama_model_default_params()
        mp.no_alloc = True
        mp.load_mode = L.LLAMA_LOAD_MODE_NONE  # with mmap, a no-alloc load aborts the process
        mp.n_gpu_layers = n_gpu_layers
        model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not model:
            raise EdgeError(f"llama.cpp could not read {path}: {llamacpp.last_error()}")
        try:
            cp = L.llama_context_default_params()
            cp.n_ctx = n_ctx
            cp.n_batch = min(2048, n_ctx)
            cp.n_ubatch = min(n_ubatch, cp.n_batch)
            cp.type_k = cp.type_v = llamacpp.KV_TYPES[kv_type]
            ctx = L.llama_init_from_model(model, cp)
            if not ctx:
                raise EdgeError(f"llama.cpp could not plan a context for {path}: {llamacpp.last_error()}")
            L.llama_free(ctx)
            weights = L.llama_model_size(model)
        finally:
            L.llama_model_free(model)
    text = "\n".join(lines)
    mib = lambda s: int(float(s) * MIB)  # noqa: E731
    kv = sum(mib(m.group(1)) for m in _KV_SIZE.finditer(text))
    compute: dict[str, int] = {}
    for m in _COMPUTE.finditer(text):
        compute[m.group(1)] = compute.get(m.group(1), 0) + mib(m.group(2))
    output = sum(mib(m.group(2)) for m in _OUTPUT.finditer(text))
    return DryRun(weights=weights, kv=kv, compute=compute, output=output)
