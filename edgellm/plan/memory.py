"""How much RAM and VRAM a GGUF needs at a given context, KV cache type and number of GPU layers.

Everything comes from the file's header (tensor sizes, shape) and follows llama.cpp's own rules:

- weights: llama.cpp counts the output layer (output norm + output matrix, or a GPU copy of the tied
  embeddings) as layer n_layer and puts layer i on the GPU when i >= n_layer + 1 - n_gpu_layers: the output
  layer goes first, then `blk.i` from the last one down. The token embeddings always stay on the CPU. CPU weights are memory-mapped from the file. Mixture-of-experts
  files: the experts of the first `n_cpu_moe` layers stay in RAM even when their layer is on the GPU
  (llama.cpp's `--n-cpu-moe`, a tensor buffer override), the rest of those layers goes to the GPU.
- KV cache: n_ctx (rounded up to 256 cells) x each layer's K and V rows, on the device of its layer.
  Layers with a sliding window (Gemma 2/3) keep only window + n_ubatch cells (rounded up to 256, never
  more than the context) with `swa_full = false`, as the runtime loads them. Each of n_seq sequences has
  its own cache of n_ctx / n_seq cells (llama.cpp's non-unified KV cache).
- compute buffer (flash attention, which llama.cpp's "auto" turns on for CPU and CUDA): the larger of two
  stages, on the device that runs them. The output stage holds the logits of a full micro-batch plus two
  activations, n_ubatch * (n_vocab + 2 n_embd) floats (a 262k vocabulary makes that half a GiB). The layer
  stage holds the attention masks (n_ubatch x cells, f16, one per kind of attention) and the feed-forward
  intermediates: gate, up and their product, n_ubatch x the active width (n_ff, or experts used x expert
  width), plus the experts' outputs and two activations.
- recurrent state (hybrid models: Qwen3.5, Qwen3-Next, LFM2, Granite 4): their linear-attention, short-convolution
  and Mamba2 layers keep no KV cache but a fixed F32 state per sequence, whatever the context: the convolution's
  last inputs and (linear attention, Mamba2) each head's state matrix (llama.cpp's n_embd_r + n_embd_s), on the
  device of the layer; counted with the KV cache.
- output buffer: one row of logits.
- LoRA adapters: their tensors sit beside the base tensors they change (on the GPU for offloaded layers).

Checked against llama.cpp's own accounting (a no-alloc dry run, `llama_dry_run` below) in the tests.

llama.cpp reserves the whole CPU compute buffer, but the runtime asks for one row of logits per batch, so
only the activations part is ever touched; RAM use (what peak RSS shows) counts that part, VRAM (where a
reservation is a real allocation) counts all of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..formats.gguf_info import EXPERT_TENSOR, GGUFInfo

MIB = 1 << 20
KV_CELL_PAD = 256  # llama.cpp rounds the KV cache up to a multiple of this many cells
N_UBATCH = 512  # micro-batch the runtime uses (llama.cpp's default)
RUNTIME_OVERHEAD = 72 * MIB  # the Python process, llama.cpp's libraries and small buffers (measured: 47-56 MiB + batch arrays)
GPU_HOST_BUFFERS = 3  # activations kept in host memory under full offload, in n_ubatch x n_embd floats
# The KV cache types edgellm offers, as gguf-py's ggml_type enum (its ids are llama.cpp's), and their
# (block size, bytes per block)
KV_TYPES = {name: GGMLQuantizationType[name.upper()] for name in ("f16", "q8_0", "q4_0")}
KV_TYPE_SIZES = {name: GGML_QUANT_SIZES[t] for name, t in KV_TYPES.items()}


def _row_bytes(kv_type: str, n: int) -> int:
    block, size = KV_TYPE_SIZES[kv_type]
    return n // block * size


def kv_cells(n_ctx: int) -> int:
    return -(-n_ctx // KV_CELL_PAD) * KV_CELL_PAD




@dataclass(frozen=True)
class SwaRule:
    """How llama.cpp's graph for an architecture uses a sliding window."""

    period: int  # without a per-layer list in the file, layer il slides when il % period < period - 1
    default_window: int  # the window when the file states none (0: then no layer slides)


# Architectures whose llama.cpp graph has sliding-window layers (GPT-OSS: every other one). Others run full attention everywhere,
# Phi-3 included whatever its sliding_window key says (llama.cpp disables it).
SWA_RULES = {"gemma2": SwaRule(2, 4096), "gemma3": SwaRule(6, 0), "gemma4": SwaRule(6, 0), "gpt-oss": SwaRule(2, 0)}


@dataclass(frozen=True)
class Attention:
    window: int  # sliding window in tokens (0: none)
    sliding: tuple[bool, ...]  # per layer

    @property
    def n_sliding(self) -> int:
        return sum(self.sliding)


def _count(value) -> int:
    """A non-negative count from the header; anything else (a damaged file) reads as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def attention_layout(info: GGUFInfo) -> Attention:
    """Which layers of `info` attend through a sliding window, and how wide it is."""
    n = info.n_layers
    rule = SWA_RULES.get(info.arch)
    window = _count(info.metadata.get(f"{info.arch}.attention.sliding_window", rule.default_window if rule else 0))
    if rule is None or window == 0:
        return Attention(0, (False,) * n)
    pattern = info.metadata.get(f"{info.arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) >= n:
        return Attention(window, tuple(bool(x) for x in pattern[:n]))
    period = _count(pattern) or rule.period
    return Attention(window, tuple(il % period < period - 1 for il in range(n)))


# Hybrid architectures and how their files mark the layers that keep recurrent state instead of a KV cache:
# "interval" (a per-layer list, else every n-th layer attends) or "no_kv_heads" (KV heads per layer, zero there).
RECURRENT_MARKS = {"qwen35": "interval", "qwen35moe": "interval", "qwen3next": "interval", "lfm2": "no_kv_heads", "granitehybrid": "no_kv_heads"}
RECURRENT_INTERVAL = 4  # the "interval" architectures' default


@dataclass(frozen=True)
class Recurrent:
    layers: tuple[bool, ...]  # per layer: keeps recurrent state instead of a KV cache
    state_bytes: int  # one such layer's state for one sequence


def _recurrent_flags(info: GGUFInfo) -> tuple[bool, ...]:
    n = info.n_layers
    if RECURRENT_MARKS[info.arch] == "no_kv_heads":
        kv = info.metadata.get(f"{info.arch}.attention.head_count_kv")
        return tuple(v == 0 for v in kv[:n]) if isinstance(kv, list) and len(kv) >= n else (False,) * n
    flags = info.metadata.get(f"{info.arch}.attention.recurrent_layers")
    if isinstance(flags, list) and len(flags) >= n:
        return tuple(bool(x) for x in flags[:n])
    interval = _count(info.metadata.get(f"{info.arch}.full_attention_interval")) or RECURRENT_INTERVAL
    return tuple((il + 1) % interval != 0 for il in range(n))


def recurrent_layout(info: GGUFInfo) -> Recurrent | None:
    """The recurrent layers of a hybrid model and their state size; None for other models. As llama.cpp sizes it
    (F32): LFM2's short convolutions keep their last (l_cache - 1) inputs; Mamba2 and gated delta net layers their
    convolution's last (kernel - 1) inputs of x/q, B/k and C/v, and the state matrices of every head."""
    if info.arch not in RECURRENT_MARKS:
        return None
    key = lambda name: _count(info.metadata.get(f"{info.arch}.{name}"))  # noqa: E731
    l_cache = key("shortconv.l_cache")
    d_conv, d_inner, d_state, n_group = key("ssm.conv_kernel"), key("ssm.inner_size"), key("ssm.state_size"), key("ssm.group_count")
    if l_cache:
        conv = (l_cache - 1) * info.n_embd
    else:
        conv = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)
    return Recurrent(_recurrent_flags(info), 4 * (conv + d_state * d_inner))


@dataclass(frozen=True)
class Experts:
    n_expert: int
    n_used: int
    n_ff_exp: int
    layer_bytes: tuple[int, ...]  # expert tensor bytes in each layer


def experts(info: GGUFInfo) -> Experts | None:
    """The mixture-of-experts shape of `info`, None for a dense model."""
    per_layer = [0] * info.n_layers
    for t in info.tensors:
        if t.layer is not None and t.layer < info.n_layers and EXPERT_TENSOR.search(t.name):
            per_layer[t.layer] += t.n_bytes
    if not any(per_layer):
        return None
    meta, arch = info.metadata, info.arch
    n_ff = _count(meta.get(f"{arch}.feed_forward_length"))
    return Experts(
        n_expert=_count(meta.get(f"{arch}.expert_count")),
        n_used=_count(meta.get(f"{arch}.expert_used_count")) or 1,
        n_ff_exp=_count(meta.get(f"{arch}.expert_feed_forward_length")) or n_ff,
        layer_bytes=tuple(per_layer),
    )


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
    n_cpu_moe: int = 0  # layers whose experts stay in RAM although the layer is on the GPU
    experts_cpu: int = 0  # bytes of those experts
    n_expert: int = 0  # experts per layer (0: a dense model)
    n_expert_used: int = 0
    swa_window: int = 0  # sliding window of the sliding layers (0: none)
    swa_cells: int = 0  # KV cells each sliding layer keeps (per sequence)
    lora: int = 0  # LoRA adapter bytes (counted in the weights)
    recurrent: int = 0  # recurrent state of linear-attention layers, all sequences (counted in the KV cache)

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


def _per_layer(info: GGUFInfo, key: str, default: int) -> list[int]:
    """A header count that may be one number or one per layer (a damaged entry reads as the default)."""
    value = info.metadata.get(f"{info.arch}.{key}", default)
    values = value if isinstance(value, list) and len(value) >= info.n_layers else [value] * info.n_layers
    return [_count(v) or default for v in values[: info.n_layers]]


def kv_bytes_per_cell(info: GGUFInfo, kv_type: str) -> list[int]:
    """K + V bytes one token takes in each layer. Layers may differ (Gemma 4: sliding-window layers have
    their own head size, KV heads vary by layer). With flash attention (on wherever the runtime can use it)
    each layer keeps V rows of its own width; without it llama.cpp would pad them to the widest."""
    sliding = attention_layout(info).sliding
    n_kv = _per_layer(info, "attention.head_count_kv", info.n_head_kv)
    k_swa = _count(info.metadata.get(f"{info.arch}.attention.key_length_swa")) or info.head_dim_k
    v_swa = _count(info.metadata.get(f"{info.arch}.attention.value_length_swa")) or info.head_dim_v
    k = [n * (k_swa if s else info.head_dim_k) for n, s in zip(n_kv, sliding)]
    v = [n * (v_swa if s else info.head_dim_v) for n, s in zip(n_kv, sliding)]
    return [_row_bytes(kv_type, kl) + _row_bytes(kv_type, vl) for kl, vl in zip(k, v)]


def _output_bytes(info: GGUFInfo) -> int:
    """Weights of the output layer: output norm + output matrix (or the tied token embeddings)."""
    by_name = {t.name: t.n_bytes for t in info.tensors}
    out = by_name.get("output_norm.weight", 0)
    return out + by_name.get("output.weight", by_name.get("token_embd.weight", 0))


def layer_cells(info: GGUFInfo, n_ctx: int, n_ubatch: int = N_UBATCH, n_seq: int = 1) -> tuple[list[int], Attention, int]:
    """KV cells of each layer (all sequences together), the attention layout, and a sliding layer's cells
    per sequence. llama.cpp gives each sequence n_ctx / n_seq cells, and a sliding layer window + n_ubatch
    of them (rounded up to 256, never more than the full layers have)."""
    att = attention_layout(info)
    full = kv_cells(kv_cells(n_ctx) // max(1, n_seq))
    swa = min(full, kv_cells(att.window + n_ubatch)) if att.window else full
    rec = recurrent_layout(info)
    recurrent = rec.layers if rec else (False,) * len(att.sliding)
    return [0 if r else n_seq * (swa if s else full) for s, r in zip(att.sliding, recurrent)], att, swa


def estimate(
    info: GGUFInfo,
    n_ctx: int,
    n_gpu_layers: int = 0,
    kv_type: str = "f16",
    n_ubatch: int = N_UBATCH,
    n_cpu_moe: int = 0,
    n_seq: int = 1,
    lora: Sequence[int] = (),
) -> MemoryEstimate:
    """`lora`: adapter bytes in each layer, then outside the layers (`LoraAdapter.layer_bytes`)."""
    n_layer = info.n_layers
    ngl = max(0, min(n_gpu_layers, n_layer + 1))
    first_gpu = min(n_layer, n_layer + 1 - ngl)  # the first repeating layer on the GPU
    output_on_gpu = ngl > 0
    moe = experts(info)
    n_cpu_moe = max(0, min(n_cpu_moe, n_layer)) if moe and ngl else 0

    layer_bytes = info.layer_bytes()
    kept = [moe.layer_bytes[i] if moe and i < n_cpu_moe else 0 for i in range(n_layer)]  # experts left in RAM
    w_gpu = sum(layer_bytes[i] - kept[i] for i in range(first_gpu, n_layer))
    w_cpu = sum(layer_bytes[:first_gpu]) + sum(kept[first_gpu:]) + info.non_layer_bytes
    if output_on_gpu:
        out = _output_bytes(info)
        if any(t.name == "output.weight" for t in info.tensors):
            w_cpu -= out  # moved
        else:
            w_cpu -= out - sum(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")  # norm moved, copy made
        w_gpu += out
    lora_layers, lora_outside = list(lora[:n_layer]), sum(lora[n_layer:])
    w_gpu += sum(lora_layers[first_gpu:]) + (lora_outside if output_on_gpu else 0)
    w_cpu += sum(lora_layers[:first_gpu]) + (0 if output_on_gpu else lora_outside)

    cells, att, swa_cells = layer_cells(info, n_ctx, n_ubatch, n_seq)
    per_cell = kv_bytes_per_cell(info, kv_type)
    kv_gpu = sum(c * b for c, b in zip(cells[first_gpu:], per_cell[first_gpu:]))
    kv_cpu = sum(c * b for c, b in zip(cells[:first_gpu], per_cell[:first_gpu]))
    rec = recurrent_layout(info)
    state = [rec.state_bytes * max(1, n_seq) if rec and rec.layers[il] else 0 for il in range(n_layer)]
    kv_gpu += sum(state[first_gpu:])
    kv_cpu += sum(state[:first_gpu])

    f32, f16 = 4, 2
    logits = n_ubatch * info.n_vocab * f32
    acts = 2 * n_ubatch * info.n_embd * f32
    n_ff = _count(info.metadata.get(f"{info.arch}.feed_forward_length")) or 4 * info.n_embd
    width, n_used = (moe.n_used * moe.n_ff_exp, moe.n_used) if moe else (n_ff, 1)
    ffn = n_ubatch * f32 * (3 * width + n_used * info.n_embd) + acts  # one layer's feed-forward, without the logits
    masks = n_ubatch * f16 * (max(cells, default=0) // n_seq + (swa_cells if att.n_sliding else 0))
    output_stage, layer_stage = logits + acts, ffn + masks
    if output_on_gpu:
        compute_gpu, compute_cpu = max(output_stage, layer_stage), GPU_HOST_BUFFERS * n_ubatch * info.n_embd * f32
        touched = compute_cpu
    else:
        compute_gpu = layer_stage if ngl else 0
        compute_cpu = max(output_stage, layer_stage)
        touched = layer_stage + n_ubatch * f32 * info.n_embd  # + the embeddings of the batch
    if n_cpu_moe:
        # Experts kept in RAM run there: their intermediates are CPU compute. For prompt batches llama.cpp
        # copies such weights to the GPU to multiply them there (one layer's at a time).
        compute_cpu = max(compute_cpu, ffn)
        touched = max(touched, ffn)
        compute_gpu += max(kept)
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
        n_cpu_moe=n_cpu_moe,
        experts_cpu=sum(kept),
        n_expert=moe.n_expert if moe else 0,
        n_expert_used=moe.n_used if moe else 0,
        swa_window=att.window,
        swa_cells=swa_cells if att.n_sliding else 0,
        lora=sum(lora),
        recurrent=sum(state),
    )


# --- llama.cpp's own accounting ------------------------------------------------------------------


@dataclass(frozen=True)
class DryRun:
    """Buffer sizes llama.cpp reports for a load that allocates nothing."""

    weights: int  # llama_model_size
    kv: int  # KV cache and recurrent state
    compute: dict[str, int]  # backend buffer name -> bytes
    output: int
    recurrent: int = 0  # the recurrent state alone

    @property
    def total(self) -> int:
        return self.weights + self.kv + sum(self.compute.values()) + self.output


_KV_SIZE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")
_RS_SIZE = re.compile(r"llama_memory_recurrent: size =\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"(\S+) compute buffer size =\s*([\d.]+) MiB")
_OUTPUT = re.compile(r"(\S+)\s+output buffer size =\s*([\d.]+) MiB")


_BUFFER = re.compile(r"(\S+)\s+(model|KV|RS|compute|output) buffer size =\s*([\d.]+) MiB")
BUFFER_KINDS = {"model": "weights", "KV": "kv", "RS": "kv", "compute": "compute", "output": "output"}  # RS: recurrent state


def allocations(log: Sequence[str]) -> dict[str, dict[str, int]]:
    """What llama.cpp says it allocated while loading (its log lines): bytes per buffer (CPU_Mapped, CPU,
    Vulkan0, CUDA0, CUDA_Host, ...) and kind (weights, kv, compute, output)."""
    out: dict[str, dict[str, int]] = {}
    for line in log:
        m = _BUFFER.search(line)
        if m:
            kinds = out.setdefault(m.group(1), {})
            kind = BUFFER_KINDS[m.group(2)]
            kinds[kind] = kinds.get(kind, 0) + int(float(m.group(3)) * MIB)
    return out


def llama_dry_run(
    path: str | Path, n_ctx: int, kv_type: str = "f16", n_gpu_layers: int = 0, n_ubatch: int = N_UBATCH, swa_full: bool = False
) -> DryRun:
    """Ask llama.cpp what it would allocate (no_alloc + no mmap: nothing is read or allocated). Sliding-window
    layers get a window-sized cache unless `swa_full`, as the runtime loads models."""
    import llama_cpp as L

    from ..engine import llamacpp
    from ..errors import EdgeError

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
            cp.type_k = cp.type_v = KV_TYPES[kv_type]
            cp.swa_full = swa_full
            ctx = L.llama_init_from_model(model, cp)
            if not ctx:
                raise EdgeError(f"llama.cpp could not plan a context for {path}: {llamacpp.last_error()}")
            L.llama_free(ctx)
            weights = L.llama_model_size(model)
        finally:
            L.llama_model_free(model)
    text = "\n".join(lines)
    mib = lambda s: int(float(s) * MIB)  # noqa: E731
    recurrent = sum(mib(m.group(1)) for m in _RS_SIZE.finditer(text))
    kv = sum(mib(m.group(1)) for m in _KV_SIZE.finditer(text)) + recurrent
    compute: dict[str, int] = {}
    for m in _COMPUTE.finditer(text):
        compute[m.group(1)] = compute.get(m.group(1), 0) + mib(m.group(2))
    output = sum(mib(m.group(2)) for m in _OUTPUT.finditer(text))
    return DryRun(weights=weights, kv=kv, compute=compute, output=output, recurrent=recurrent)
