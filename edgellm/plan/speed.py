"""How fast a level will run here: decode and prompt tokens/s for a file, an offload split and a thread count.

Numbers measured on this machine win: `edgellm bench --save` records tokens/s per level in a package's
manifest, and a level benchmarked here with the same threads and GPU layers is predicted as measured.
Otherwise a model of the machine:

- decode: a token reads every weight it passes through once (each layer, the experts it uses, the output
  matrix, LoRA adapters' matrices; one row of the embeddings). Per tensor on the CPU that costs the larger of its compute (a cost
  per byte for its quant type at one thread, divided over the threads) and its share of the machine's
  memory bandwidth; on a GPU, its bytes over the GPU's bandwidth. Each layer adds a fixed cost (graph,
  synchronisation, kernel launches).
- prompt: compute-bound, a cost per weight for the quant type plus one per layer and model width (norms,
  rope, attention), divided over the threads. With a GPU,
  llama.cpp multiplies a prompt's batches there and copies the weights of layers kept in RAM over the bus.

The per-type costs were fitted to llama-bench on the reference machine below (`scripts/bench_speed_model.py`
measures; other x86 cores with AVX2 should be within a few tens of percent); the memory
bandwidth is measured once (numpy reads, a fraction of a second) and cached. `scripts/bench_speed_model.py`
compares predictions with llama-bench on every level of a package.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace

from ..errors import EdgeError
from ..formats.gguf_info import GGUFInfo
from .memory import EXPERT_TENSOR, experts

GB = 1e9
INTERACTIVE_TPS = 10.0  # decode speed the default policy asks for: a reply streams faster than most people read

# Reference machine: AMD EPYC (2 cores of a cloud VM), llama.cpp's CPU backend with AVX2; fitted to llama-bench's
# wall-clock tokens/s at one thread on the seven levels of SmolLM2-135M and of a Llama-3.2-1B shape (F16 to
# Q2_K), and checked at two threads (within 15%); Q4_1 from the demo model (SmolLM2 Q4_1) alone.
REF_MEMORY_BPS = 31e9  # what its two threads read together, as measure_machine() sees it (a simulated machine
# scales this with its cores)
# Decode: seconds per GB of weights at one thread, by tensor type.
DECODE_S_PER_GB = {
    "F32": 0.046, "F16": 0.046, "BF16": 0.055, "Q8_0": 0.062, "Q6_K": 0.044, "Q5_K": 0.066, "Q4_K": 0.047,
    "Q3_K": 0.091, "Q2_K": 0.070, "Q5_0": 0.105, "Q5_1": 0.116, "Q4_0": 0.037, "Q4_1": 0.137,
    "MXFP4": 0.093,  # GPT-OSS's experts: from its time per token against Q8_0's, side by side (see below)
}
DECODE_S_PER_GB_OTHER = 0.100  # i-quants and rarer types: decoding them costs more per byte
LAYER_S = 92e-6  # fixed cost per layer and token (graph, threads meeting at each step)
# Prompt: nanoseconds per weight and token at one thread, by tensor type.
PROMPT_NS_PER_WEIGHT = {"F32": 0.030, "F16": 0.0154, "BF16": 0.020, "Q8_0": 0.0129, "Q6_K": 0.0079, "Q5_K": 0.0046,
                        "Q4_K": 0.0101, "Q3_K": 0.0073, "Q2_K": 0.021, "Q5_0": 0.0149, "Q5_1": 0.050, "Q4_0": 0.0068,
                        "Q4_1": 0.042, "MXFP4": 0.011}
# MXFP4 was measured as a ratio to Q8_0 (median of 8 alternated llama-bench pairs at one thread, tg64 / pp128) on a
# GPT-OSS shape whose experts are nearly all the weights and all used per token, the machine busy: ±20%.
PROMPT_NS_PER_WEIGHT_OTHER = 0.020
PROMPT_LAYER_NS_PER_EMBD = 41.0  # per layer and prompt token, times n_embd: norms, rope, attention over the prompt

# GPUs: memory bandwidth by name (bytes/s); matrix speed as a multiple of it (calibrated on an H200:
# 8B Q4_K_M decodes 263 tok/s and reads prompts at 9300 tok/s there).
GPU_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40": 0.86e12, "A10": 0.6e12, "T4": 0.32e12,
                 "4090": 1.0e12, "4080": 0.72e12, "4070": 0.5e12, "4060": 0.27e12, "3090": 0.94e12,
                 "3080": 0.76e12, "3070": 0.45e12, "3060": 0.36e12}
GPU_BANDWIDTH_OTHER = 0.3e12
GPU_FLOPS_PER_BPS = 30.0
GPU_LAYER_S = 75e-6  # kernel launches and synchronisation per layer and token
BUS_BPS = 8e9  # weights of RAM layers copied to the GPU for each prompt batch (effective PCIe rate)
N_UBATCH = 512


@dataclass(frozen=True)
class MachineSpeed:
    """What the speed model needs of a machine."""

    memory_bps: float  # memory read speed of every core together
    gpu_bps: float = 0.0  # the offload GPU's memory bandwidth (0: none)
    source: str = "measured"  # "measured" or "reference" (a simulated machine)


@dataclass(frozen=True)
class Speed:
    decode_tps: float
    prompt_tps: float
    source: str  # "measured" (bench --save on this machine) or "predicted"

    def to_dict(self) -> dict:
        return asdict(self)


def reference_machine(cores: int, gpu_name: str | None = None) -> MachineSpeed:
    """The reference machine's cores, `cores` of them (a simulated machine's plan is the same wherever it is
    made); memory bandwidth grows with up to three of them, as a laptop's two memory channels fill."""
    return MachineSpeed(min(cores, 3) * REF_MEMORY_BPS / 2, gpu_bandwidth(gpu_name), "reference")


def gpu_bandwidth(name: str | None) -> float:
    if not name:
        return 0.0
    return next((bps for key, bps in GPU_BANDWIDTH.items() if key in name), GPU_BANDWIDTH_OTHER)


# --- measuring this machine --------------------------------------------------------------------------

_SAMPLE = 48 << 20  # bytes read per thread: beyond a core's share of the caches
_MAX_READERS = 8  # enough threads to fill a laptop's or a workstation's memory bus


def _read_bps(threads: int) -> float:
    """Memory read speed of `threads` threads summing their own arrays (numpy releases the GIL)."""
    import numpy as np

    arrays = [np.ones(_SAMPLE // 8) for _ in range(threads)]
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=a.sum) for a in arrays]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, threads * _SAMPLE / (time.perf_counter() - t0))
    return best


def measure_machine(cores: int, gpu_name: str | None = None) -> MachineSpeed:
    every = max(_read_bps(1), _read_bps(max(1, min(cores, _MAX_READERS))))  # other programs' load only lowers it
    return MachineSpeed(every, gpu_bandwidth(gpu_name))


def machine_speed(hw) -> MachineSpeed:
    """This machine's speeds: measured once and cached per CPU, core count and GPU."""
    gpu_name = hw.offload_gpus[0].name if hw.offload_gpus else None
    if hw.simulated:
        return reference_machine(hw.cpu_cores, gpu_name)
    from ..fsutil import atomic_output
    from ..paths import cache_dir

    key = f"{hw.cpu_name}|{hw.cpu_cores}|{gpu_name or ''}"
    path = cache_dir() / "machine-speed.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key and float(cached["memory_bps"]) > 0:
            return MachineSpeed(float(cached["memory_bps"]), gpu_bandwidth(gpu_name))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    m = measure_machine(hw.cpu_cores, gpu_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"key": key, "memory_bps": m.memory_bps}))
    except (OSError, EdgeError):
        pass  # a cache that cannot be written only costs the measurement next time
    return m


# --- the model ------------------------------------------------------------------------------------------


def _per_token_tensors(info: GGUFInfo) -> list[tuple[str, int, int, int, bool]]:
    """(type, bytes read per token, weights used per token, layer, is an expert tensor) for each tensor a
    token passes through; the output layer is layer n_layers, as llama.cpp counts."""
    tied = not any(t.name == "output.weight" for t in info.tensors)
    moe = experts(info)
    share = moe.n_used / moe.n_expert if moe and moe.n_expert else 1.0
    out = []
    for t in info.tensors:
        if t.name == "token_embd.weight" and not tied:
            continue  # one row per token
        layer = t.layer if t.layer is not None and t.layer < info.n_layers else info.n_layers
        expert = bool(EXPERT_TENSOR.search(t.name))
        f = share if expert else 1.0
        out.append((t.ggml_type, int(t.n_bytes * f), int(t.n_elements * f), layer, expert))
    return out


def _lora_tensors(lora: list[int]) -> list[tuple[str, int, int, int, bool]]:
    """LoRA adapters' A and B matrices per layer (bytes in each layer, then outside them, as `planner.lora_bytes`
    gives them), as tensors a token passes through: llama.cpp multiplies by both beside each adapted weight.
    Their type is taken as F32 (F16 costs the same per byte here)."""
    return [("F32", nbytes, nbytes // 4, layer, False) for layer, nbytes in enumerate(lora) if nbytes]


def predict(info: GGUFInfo, machine: MachineSpeed, threads: int, n_gpu_layers: int = 0, n_cpu_moe: int = 0,
            lora: list[int] | None = None) -> Speed:
    """Decode and prompt tokens/s of `info` with `n_gpu_layers` on the GPU (llama.cpp's count: the output
    layer first) and `threads` CPU threads; `lora` is the bytes of the adapters applied, per layer then outside
    the layers (each part runs where its layer does)."""
    n = info.n_layers
    first_gpu = n + 1 - min(max(0, n_gpu_layers), n + 1) if machine.gpu_bps else n + 1
    threads = max(1, threads)
    cpu_s = gpu_s = prompt_cpu_s = prompt_gpu_s = bus_bytes = 0.0
    for qtype, nbytes, weights, layer, expert in _per_token_tensors(info) + _lora_tensors(lora or []):
        on_gpu = layer >= first_gpu and not (expert and layer < n_cpu_moe)  # --n-cpu-moe keeps those experts in RAM
        if on_gpu:
            gpu_s += nbytes / machine.gpu_bps
            prompt_gpu_s += 2 * weights / (GPU_FLOPS_PER_BPS * machine.gpu_bps)
            continue
        compute = nbytes / GB * DECODE_S_PER_GB.get(qtype, DECODE_S_PER_GB_OTHER) / threads
        cpu_s += max(compute, nbytes / machine.memory_bps)
        ns = PROMPT_NS_PER_WEIGHT.get(qtype, PROMPT_NS_PER_WEIGHT_OTHER) / threads
        prompt_cpu_s += weights * ns * 1e-9
        bus_bytes += nbytes
    n_gpu = max(0, n + 1 - first_gpu)
    n_cpu = n + 1 - n_gpu
    decode = cpu_s + n_cpu * LAYER_S + gpu_s + n_gpu * GPU_LAYER_S
    if machine.gpu_bps:
        # prompt batches run on the GPU even with no layer there; RAM layers' weights cross the bus per micro-batch
        prompt = prompt_gpu_s + bus_bytes / BUS_BPS / N_UBATCH
    else:
        prompt = prompt_cpu_s + n_cpu * info.n_embd * PROMPT_LAYER_NS_PER_EMBD * 1e-9 / threads
    return Speed(1.0 / decode if decode > 0 else 0.0, 1.0 / prompt if prompt > 0 else 0.0, "predicted")


RPC_TOKEN_S = 2.1e-3  # per worker and generated token: llama.cpp's RPC round trips (measured on loopback)
RPC_PROMPT_TOKEN_S = 0.05e-3  # per worker and prompt token (a batch crosses in one round trip)


def predict_split(info: GGUFInfo, machine: MachineSpeed, threads: int, n_workers: int, lora: list[int] | None = None) -> Speed:
    """Tokens/s with layers spread over this machine and `n_workers` RPC workers, taking the workers to be as
    fast as this machine (layers run one device after the other) and the network as fast as loopback."""
    local = predict(info, replace(machine, gpu_bps=0.0), threads, lora=lora)
    decode = 1 / local.decode_tps + n_workers * RPC_TOKEN_S
    prompt = 1 / local.prompt_tps + n_workers * RPC_PROMPT_TOKEN_S
    return Speed(1 / decode, 1 / prompt, "predicted")


def measured(bench: dict | None, machine_id: str, threads: int, n_gpu_layers: int) -> Speed | None:
    """A manifest's `bench` record as a Speed, when it was measured here with these settings."""
    if not isinstance(bench, dict) or bench.get("machine_id") != machine_id:
        return None
    if bench.get("n_threads") != threads or bench.get("n_gpu_layers") != n_gpu_layers:
        return None
    tg, pp = bench.get("tg_tps"), bench.get("pp_tps")
    if not isinstance(tg, (int, float)) or isinstance(tg, bool) or not tg > 0:
        return None
    pp_ok = isinstance(pp, (int, float)) and not isinstance(pp, bool) and pp > 0
    return Speed(float(tg), float(pp) if pp_ok else 0.0, "measured")
