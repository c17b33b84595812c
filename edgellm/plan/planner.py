"""Which file, how many GPU layers and what context: the plan for running a model on a machine.

Rules, in order:
1. the highest-quality level (most bits per weight) that fits and is predicted to decode at least
   `min_speed` tokens/s (default 10, `INTERACTIVE_TPS`: a reply streams faster than people read; 0 = the
   highest quality that fits at all); when none is that fast, the fastest that fits. Speeds are measured
   ones (`bench --save` on this machine) or predicted (`edgellm.plan.speed`);
2. for it, the most GPU layers that fit in free VRAM with a safety margin (the rest runs from RAM). A
   mixture-of-experts model first keeps every layer on the GPU and moves the experts of its first layers
   to RAM, one layer at a time (llama.cpp's --n-cpu-moe): experts are most of the weights but only a few
   run per token, so the CPU handles them better than whole layers; only with every expert in RAM do
   whole layers leave the GPU;
3. when it fits at no GPU split, the context shrinks by halves, never below `min_ctx`, before a lower
   level is tried.
An explicit context is kept as asked. If nothing fits, the error gives the numbers. Sliding-window layers
(Gemma 2/3) are counted with the window-sized KV cache the runtime gives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..engine.adapters import LoraAdapter, describe
from ..errors import NotEnoughSpace
from ..fsutil import human_bytes
from .accuracy_limit import accuracy_limit
from .hardware import HardwareProfile
from .memory import MemoryEstimate, estimate, experts, kv_cells
from .projector import ProjectorPlan, place_projector
from ..store.models import ModelFile, ModelRef
from .speed import INTERACTIVE_TPS, MachineSpeed, Speed, machine_speed, measured, predict

DEFAULT_CTX = 8192  # context asked for when none is given (capped by what the model was trained for)
MIN_CTX = 2048  # the planner never shrinks the context below this
RAM_MARGIN = (512 << 20, 0.05)  # keep free: fixed bytes + share of the budget (OS, other programs)
VRAM_MARGIN = (512 << 20, 0.05)  # the CUDA/Metal context and driver take their part first


def _budget(free: int, margin: tuple[int, float]) -> int:
    fixed, share = margin
    return max(0, int(free - fixed - share * free))


def memory_budgets(hw: HardwareProfile) -> tuple[int, int]:
    """(RAM, VRAM) a model may take on `hw`: what is free less the margins; no VRAM without GPU offload."""
    vram = _budget(hw.vram_free, VRAM_MARGIN) if hw.offload_gpus else 0
    return _budget(hw.ram_available, RAM_MARGIN), vram


@dataclass(frozen=True)
class LevelFit:
    level: str
    path: Path
    file_size: int
    fit: str  # "gpu" (all on the GPU), "partial", "cpu" (all in RAM), "no"
    n_layers: int
    n_gpu_layers: int
    n_ctx: int
    ram: int
    vram: int
    n_cpu_moe: int = 0  # layers whose experts stay in RAM while the layer is on the GPU
    speed: Speed | None = None  # tokens/s with this placement (None: it does not fit)

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path), "speed": self.speed.to_dict() if self.speed else None}


@dataclass(frozen=True)
class WorkerShare:
    """The layers a plan puts on one `edgellm worker` (llama.cpp RPC server), and the memory they take there."""

    host: str
    port: int
    n_layers: int  # of the offloaded ones (the output layer counts as one)
    memory: int  # bytes planned on the worker
    budget: int  # what the worker lends, less the margins
    free: int  # free memory it reported
    device: str = ""  # a GPU of this machine (ggml device name) instead of a worker: host and port are empty

    @property
    def endpoint(self) -> str:
        return self.device or f"{self.host}:{self.port}"

    def to_dict(self) -> dict:
        return {**self.__dict__, "endpoint": self.endpoint}


FIT_TEXT = {"gpu": "fits fully on the GPU", "partial": "fits partially on the GPU", "cpu": "fits in RAM", "no": "does not fit"}
FIT_SHORT = {"gpu": "full (GPU)", "partial": "partial", "cpu": "full (RAM)", "no": "no"}


@dataclass(frozen=True)
class Plan:
    name: str
    path: Path
    level: str
    n_layers: int
    n_gpu_layers: int  # 0 .. n_layers + 1 (the output layer counts as one more)
    n_ctx: int
    kv_type: str
    memory: MemoryEstimate
    ram_budget: int
    vram_budget: int
    hardware: str  # one-line summary of the machine planned for
    levels: tuple[LevelFit, ...] = ()
    notes: tuple[str, ...] = field(default=())
    n_cpu_moe: int = 0  # the experts of layers 0 .. n_cpu_moe-1 stay in RAM (their other weights on the GPU)
    n_threads: int = 1  # CPU threads llama.cpp runs with
    adaptive_threads: int = 0  # >0: re-choose threads among this many cores before each reply (no --threads)
    n_ubatch: int = 512  # prompt tokens per llama.cpp step (the memory estimate counts 512)
    n_seq: int = 1  # sequences sharing the context (a server's slots), n_ctx / n_seq tokens each
    chat_template: str | None = None  # --chat-template: a format name or a template file (else the model's own)
    speed: Speed | None = None  # the chosen level's tokens/s
    why: str = "the highest-quality level that fits"  # how the level was chosen
    workers: tuple[WorkerShare, ...] = ()  # --rpc: the offloaded layers go to these, in order (this machine's GPUs first)
    loras: tuple[LoraAdapter, ...] = ()  # --lora: adapters applied at their scales (checked against the file)
    devices: tuple[str, ...] = ()  # the GPUs (ggml device names: CUDA0, Vulkan0) the offloaded layers go to
    parts: int = 1  # files the level takes: more than one when it is split (`path` is then the first part)
    projector: ProjectorPlan | None = None  # a vision model's projector: its weights are kept out of the budgets above

    @property
    def gpu_layers(self) -> str:
        return gpu_layers_text(self.n_gpu_layers, self.n_layers)

    @property
    def fit(self) -> str:
        return _fit_kind(self.n_gpu_layers, self.n_layers, self.n_cpu_moe)

    @property
    def _more_parts(self) -> str:
        return f" and {self.parts - 1} more parts" if self.parts > 1 else ""

    def explain(self) -> str:
        m = self.memory
        lines = [
            f"Machine: {self.hardware}",
            f"Model: {self.name} ({len(self.levels) or 1} level{'s' if len(self.levels) != 1 else ''})",
            f"Choice: {self.level} ({self.path.name}{self._more_parts}), {self.why}; "
            + (f"split with {len(self.workers)} worker{'s' if len(self.workers) != 1 else ''}" if self.workers else FIT_TEXT[self.fit]),
            f"  {'Worker' if self.workers else 'GPU'} layers: {self.gpu_layers} (incl. output layer){self._on_devices} · "
            f"{threads_text(self.n_threads)} on the CPU",
            *([f"  Speed: {speed_text(self.speed)}"] if self.speed else []),
            f"  Context: {self.n_ctx} tokens, KV cache {self.kv_type}: {human_bytes(m.kv_cpu + m.kv_gpu)}",
            *self._attention_lines(),
            *([f"  {describe(self.loras)}, counted with the weights"] if self.loras else []),
            f"  RAM:  {human_bytes(m.ram)} of {human_bytes(self.ram_budget)} usable (weights {human_bytes(m.weights_cpu)}, "
            f"KV {human_bytes(m.kv_cpu)}, compute {human_bytes(m.compute_cpu_touched)}, runtime {human_bytes(m.overhead)})",
        ]
        if (self.vram_budget or m.vram) and not self.workers:
            lines.append(
                f"  VRAM: {human_bytes(m.vram)} of {human_bytes(self.vram_budget)} usable (weights {human_bytes(m.weights_gpu)}, "
                f"KV {human_bytes(m.kv_gpu)}, compute {human_bytes(m.compute_gpu)})"
            )
        if self.projector:
            lines.append(f"  Images: {self.projector.text()} ({self.projector.path.name}, beside the memory above)")
        lines += self._worker_lines()
        lines += [f"  Note: {n}" for n in self.notes]
        return "\n".join(lines)

    @property
    def _on_devices(self) -> str:
        return f" on {', '.join(self.devices)}" if self.devices and self.n_gpu_layers and not self.workers else ""

    def _worker_lines(self) -> list[str]:
        """The split per device: the first layers here, the last ones (and the output layer) on the workers."""
        if not self.workers:
            return []
        local = self.n_layers + 1 - self.n_gpu_layers
        lines = [f"  Split over {len(self.workers) + 1} devices (layers incl. output layer; the speed above takes the "
                 "workers to be as fast as this machine and the network as fast as loopback: `edgellm run --rpc` "
                 "measures it):",
                 f"    here (CPU): {local} layers, {human_bytes(self.memory.ram)} of RAM"]
        for w in self.workers:
            where = f"GPU {w.device} here" if w.device else f"worker {w.endpoint}"
            lines.append(f"    {where}: {w.n_layers} layers, {human_bytes(w.memory)} of {human_bytes(w.budget)} usable "
                         f"({human_bytes(w.free)} free)")
        return lines

    def _attention_lines(self) -> list[str]:
        """What the plan decided for experts, sliding windows and recurrent state, for models that have them."""
        m, lines = self.memory, []
        if m.recurrent:
            lines.append(f"  Recurrent state: {human_bytes(m.recurrent)} at any context (in the KV cache above)")
        if m.swa_window:
            lines.append(
                f"  Sliding window: {m.swa_window} tokens; those layers keep {m.swa_cells} KV cells "
                f"(window + micro-batch), the others {kv_cells(self.n_ctx)}"
            )
        if m.n_expert:
            where = (
                "in RAM with their layers" if self.n_gpu_layers == 0
                else f"those of layers 0-{self.n_cpu_moe - 1} stay in RAM ({human_bytes(m.experts_cpu)}), the rest on the GPU"
                if self.n_cpu_moe
                else "on the GPU with their layers"
            )
            lines.append(f"  Experts: {m.n_expert} per layer, {m.n_expert_used} used per token; {where}")
        return lines

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "parts": self.parts,
            "level": self.level,
            "fit": self.fit,
            "n_layers": self.n_layers,
            "n_gpu_layers": self.n_gpu_layers,
            "n_ctx": self.n_ctx,
            "kv_type": self.kv_type,
            "memory": self.memory.to_dict(),
            "ram_budget": self.ram_budget,
            "vram_budget": self.vram_budget,
            "hardware": self.hardware,
            "levels": [lv.to_dict() for lv in self.levels],
            "notes": list(self.notes),
            "n_cpu_moe": self.n_cpu_moe,
            "n_threads": self.n_threads,
            "adaptive_threads": self.adaptive_threads,
            "n_ubatch": self.n_ubatch,
            "n_seq": self.n_seq,
            "chat_template": self.chat_template,
            "speed": self.speed.to_dict() if self.speed else None,
            "why": self.why,
            "workers": [w.to_dict() for w in self.workers],
            "loras": [a.to_dict() for a in self.loras],
            "devices": list(self.devices),
            "projector": self.projector.to_dict() if self.projector else None,
        }


def speed_text(speed: Speed) -> str:
    """"~24 tok/s decode, ~310 tok/s prompt (predicted)"."""
    mark = "~" if speed.source == "predicted" else ""
    prompt = f", {mark}{speed.prompt_tps:.0f} tok/s prompt" if speed.prompt_tps else ""
    return f"{mark}{speed.decode_tps:.1f} tok/s decode{prompt} ({speed.source})"


def threads_text(n_threads: int) -> str:
    """"1 thread", "4 threads"."""
    return f"{n_threads} thread{'s' if n_threads != 1 else ''}"


def gpu_layers_text(n_gpu_layers: int, n_layers: int) -> str:
    """"12/33": llama.cpp counts the output layer as one more, so n_layers + 1 means all of them."""
    return f"{n_gpu_layers}/{n_layers + 1}"


def _fit_kind(ngl: int, n_layers: int, n_cpu_moe: int = 0) -> str:
    return "gpu" if ngl > n_layers and not n_cpu_moe else "partial" if ngl > 0 else "cpu"


def placements(f: ModelFile, gpu: bool, ngl: int | None = None) -> list[tuple[int, int]]:
    """(GPU layers, layers with experts in RAM) from the most on the GPU to the least: for a mixture of
    experts, the experts leave the GPU layer by layer before whole layers do. `ngl` keeps only the
    placements with that many GPU layers (more than the model has means all of them)."""
    n = f.info.n_layers
    if not gpu:
        return [(0, 0)]
    if experts(f.info) is None:
        out = [(g, 0) for g in range(n + 1, -1, -1)]
    else:
        out = [(n + 1, k) for k in range(n + 1)] + [(g, n) for g in range(n, 0, -1)] + [(0, 0)]
    if ngl is None:
        return out
    forced = min(ngl, n + 1)
    return [p for p in out if p[0] == forced] or [(forced, 0)]


def lora_bytes(loras: tuple[LoraAdapter, ...], n_layers: int) -> list[int]:
    """The adapters' bytes in each layer, then outside the layers (as `estimate` takes them)."""
    return [sum(col) for col in zip(*(a.layer_bytes(n_layers) for a in loras))]


def best_gpu_layers(
    f: ModelFile, n_ctx: int, kv_type: str, ram: int, vram: int, gpu: bool, unified: bool = False,
    ngl: int | None = None, n_seq: int = 1, loras: tuple[LoraAdapter, ...] = (),
) -> MemoryEstimate | None:
    """The placement with the most on the GPU that fits both budgets, or None. With unified memory
    (Apple silicon) what the GPU holds comes out of the same RAM."""
    lora = lora_bytes(loras, f.info.n_layers)
    for g, n_cpu_moe in placements(f, gpu, ngl):
        m = estimate(f.info, n_ctx, g, kv_type, n_cpu_moe=n_cpu_moe, n_seq=n_seq, lora=lora)
        ram_used = m.ram + (m.vram if unified else 0)
        if m.vram <= vram and ram_used <= ram:
            return m
        if m.vram <= vram and not unified:
            return None  # less on the GPU only needs more RAM
    return None


def _contexts(target: int, min_ctx: int) -> list[int]:
    out, c = [], target
    while c > min_ctx:
        out.append(c)
        c //= 2
    return out + [min_ctx]


def _fit_level(
    f: ModelFile, contexts: list[int], kv_type: str, ram: int, vram: int, gpu: bool, unified: bool, ngl: int | None, n_seq: int,
    loras: tuple[LoraAdapter, ...],
) -> MemoryEstimate | None:
    for c in contexts:
        m = best_gpu_layers(f, c, kv_type, ram, vram, gpu, unified, ngl, n_seq, loras)
        if m is not None:
            return m
    return None


def make_plan(
    model: ModelRef,
    hw: HardwareProfile,
    ctx: int | None = None,
    kv_type: str | None = None,
    min_ctx: int = MIN_CTX,
    ram: int | None = None,
    vram: int | None = None,
    ngl: int | None = None,
    threads: int | None = None,
    n_seq: int = 1,
    min_speed: float | None = None,
    machine: MachineSpeed | None = None,
    loras: tuple[LoraAdapter, ...] = (),
    max_loss: float | None = None,
    max_loss_task: str | None = None,
) -> Plan:
    """Plan `model` for `hw`. `ram`/`vram` replace the machine's free memory (to plan for another machine);
    `ngl` fixes the GPU layers, `threads` the CPU threads; `n_seq` sequences share the context (`ctx` in all).
    `min_speed` is the decode tokens/s to reach (None: INTERACTIVE_TPS; 0: quality first); `machine` the speeds
    to predict with (default: this machine's, measured once; a simulated machine's are the reference's).
    `loras` count with the weights. `max_loss` (percentage points): the smallest level that fits whose recorded
    task accuracy is that close to the best level's (`accuracy_limit`; on `max_loss_task` alone if named)."""
    hw = hw.with_overrides(ram=ram, vram=vram)
    threads = threads or hw.cpu_cores  # physical cores, as llama.cpp's tools use
    machine = machine or machine_speed(hw)
    kv_type = kv_type or "f16"
    gpu = bool(hw.offload_gpus)
    ram_budget, vram_budget = memory_budgets(hw)
    notes: list[str] = list(model.skipped)  # damaged levels of a package, left out
    ram_fit, vram_fit, projector = ram_budget, vram_budget, None  # what the levels may take
    if model.projector is not None:  # reserved first, where llama.cpp's mtmd puts it
        projector = place_projector(model.projector, vram_budget, gpu)
        if projector.on_gpu:
            vram_fit -= projector.weights
        else:
            ram_fit = max(0, ram_fit - projector.weights)

    n_ctx_train = max(f.info.n_ctx_train for f in model.files) or DEFAULT_CTX
    if ctx is not None:
        contexts = [ctx]
        if ctx > n_ctx_train:
            notes.append(f"{ctx} tokens is more than the {n_ctx_train} the model was trained on: quality may drop")
    else:
        target = min(DEFAULT_CTX, n_ctx_train)
        contexts = _contexts(target, min(min_ctx, target))

    levels, fitting = [], []
    for f in model.files:
        m = _fit_level(f, contexts, kv_type, ram_fit, vram_fit, gpu, hw.unified_memory, ngl, n_seq, loras)
        if m is None:
            worst = estimate(f.info, contexts[-1], f.info.n_layers + 1 if gpu else 0, kv_type, lora=lora_bytes(loras, f.info.n_layers))
            levels.append(LevelFit(f.level, f.path, f.size, "no", f.info.n_layers, worst.n_gpu_layers, contexts[-1], worst.ram, worst.vram))
            continue
        kind = _fit_kind(m.n_gpu_layers, f.info.n_layers, m.n_cpu_moe)
        # a level benchmarked here ran without adapters: with them it is predicted
        speed = (None if loras else measured(f.bench, hw.machine_id, threads, m.n_gpu_layers)) or predict(
            f.info, machine, threads, m.n_gpu_layers, m.n_cpu_moe, lora_bytes(loras, f.info.n_layers)
        )
        levels.append(LevelFit(f.level, f.path, f.size, kind, f.info.n_layers, m.n_gpu_layers, m.n_ctx, m.ram, m.vram, m.n_cpu_moe, speed))
        fitting.append((f, m, speed))

    if not fitting:
        raise NotEnoughSpace(_does_not_fit(model, hw, contexts[-1], kv_type, ram_fit, vram_fit, gpu))
    if max_loss is not None:
        (f, m, speed), why, limit_notes = _within_loss(model, fitting, max_loss, max_loss_task)
        notes.extend(limit_notes)
        if min_speed is not None:
            notes.append("--min-speed is not used with --max-loss: the smallest level within the loss is the fastest")
    else:
        (f, m, speed), why = choose_level(fitting, INTERACTIVE_TPS if min_speed is None else min_speed, len(model.files))
    if m.n_ctx < contexts[0]:
        notes.append(f"context shrunk from {contexts[0]} to {m.n_ctx} tokens to keep {f.level}")
    if not gpu and hw.gpus:
        notes.append("the GPU is not used: this llama.cpp build cannot offload")
    if ngl and not gpu:
        notes.append(f"--ngl {ngl} asks for GPU layers, but llama.cpp has no GPU to use here: every layer runs in RAM")
    return Plan(
        name=model.name,
        path=f.path,
        parts=len(f.parts),
        level=f.level,
        n_layers=f.info.n_layers,
        n_gpu_layers=m.n_gpu_layers,
        n_ctx=m.n_ctx,
        kv_type=kv_type,
        memory=m,
        ram_budget=ram_budget,
        vram_budget=vram_budget,
        hardware=hw.summary() + (" (simulated)" if hw.simulated else "") + "".join(f"; {n}" for n in hw.notes),
        levels=tuple(levels),
        notes=tuple(notes),
        n_cpu_moe=m.n_cpu_moe,
        n_threads=threads,
        n_seq=n_seq,
        speed=speed,
        why=why,
        loras=loras,
        devices=_devices(hw) if m.n_gpu_layers else (),
        projector=projector,
    )


def _devices(hw: HardwareProfile) -> tuple[str, ...]:
    return tuple(g.device for g in hw.offload_gpus if g.device)


def choose_level(fitting: list, min_speed: float, n_levels: int) -> tuple[tuple, str]:
    """The first (highest-quality) of `fitting` [(file, memory, speed)] that decodes at `min_speed` or more,
    else the fastest; and why, in words."""
    if n_levels == 1:
        return fitting[0], "the only level"
    if min_speed <= 0:
        return fitting[0], "the highest-quality level that fits"
    for item in fitting:
        if item[2].decode_tps >= min_speed:
            return item, f"the highest-quality level that fits and decodes at {min_speed:g} tok/s or more"
    fastest = max(fitting, key=lambda item: item[2].decode_tps)
    return fastest, f"the fastest level that fits (none decodes at {min_speed:g} tok/s here)"


def _within_loss(model: ModelRef, fitting: list, points: float, task: str | None) -> tuple[tuple, str, tuple[str, ...]]:
    """The smallest of `fitting` within `points` of the best recorded accuracy, why, and the levels left out."""
    limit = accuracy_limit(model.files, points, task)
    within = [item for item in fitting if item[0].level in limit.eligible]
    if not within:
        fits = ", ".join(item[0].level for item in fitting)
        ok = ", ".join(sorted(limit.eligible)) or "none"
        raise NotEnoughSpace(f"no level with {limit.describe(points)} fits: within the limit {ok}; fitting {fits}")
    return min(within, key=lambda item: item[0].size), f"the smallest level that fits with {limit.describe(points)}", limit.notes


def _does_not_fit(model: ModelRef, hw, n_ctx: int, kv_type: str, ram_budget: int, vram_budget: int, gpu: bool) -> str:
    smallest = min(model.files, key=lambda f: f.size)
    m = estimate(smallest.info, n_ctx, smallest.info.n_layers + 1 if gpu else 0, kv_type)
    if gpu:
        need = f"{human_bytes(m.ram + m.vram)} in RAM + VRAM"
        have = f"{human_bytes(ram_budget)} RAM + {human_bytes(vram_budget)} VRAM usable"
    else:
        need, have = f"{human_bytes(m.ram)} of RAM", f"{human_bytes(ram_budget)} usable"
    return (
        f"{model.name} does not fit this machine: its smallest level {smallest.level} needs about {need} "
        f"at a {n_ctx}-token context, and there is {have} (of {human_bytes(hw.ram_available)} RAM available)"
    )


def revalidate(plan: Plan, hw: HardwareProfile) -> Plan:
    """Check a GPU plan against the GPUs there are now; fewer layers on the GPU (or none) if it shrank, or if a
    device it names is not here."""
    if plan.n_gpu_layers == 0:
        return plan
    present = _devices(hw)
    missing = [d for d in plan.devices if d not in present]
    if plan.devices:  # the plan's own devices only
        hw = replace(hw, gpus=tuple(g for g in hw.gpus if g.device in plan.devices))
    vram_budget = _budget(hw.vram_free, VRAM_MARGIN) if hw.offload_gpus else 0
    if plan.memory.vram <= vram_budget and not missing:
        return plan
    from ..formats.gguf_info import read_gguf

    f = ModelFile(plan.level, plan.path, read_gguf(plan.path))
    ram_budget = _budget(hw.ram_available, RAM_MARGIN)
    m = best_gpu_layers(
        f, plan.n_ctx, plan.kv_type, ram_budget, vram_budget, bool(hw.offload_gpus), hw.unified_memory, n_seq=plan.n_seq,
        loras=plan.loras,
    )
    why = (
        f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not here (devices: {', '.join(present) or 'none'})" if missing
        else "the GPU is gone" if not hw.offload_gpus
        else f"the GPU has {human_bytes(hw.vram_free)} free, less than the {human_bytes(plan.memory.vram)} planned"
    )
    if m is None:
        raise NotEnoughSpace(
            f"{plan.name} {plan.level} no longer fits: {why}, and {human_bytes(estimate(f.info, plan.n_ctx, 0, plan.kv_type).ram)} "
            f"of RAM would be needed with {human_bytes(ram_budget)} usable"
        )
    note = f"{why}: running {gpu_layers_text(m.n_gpu_layers, plan.n_layers)} layers on the GPU instead of {plan.n_gpu_layers}"
    if m.n_cpu_moe != plan.n_cpu_moe:
        note += f", the experts of {m.n_cpu_moe} layers in RAM instead of {plan.n_cpu_moe}"
    return replace(
        plan, n_gpu_layers=m.n_gpu_layers, n_cpu_moe=m.n_cpu_moe, memory=m, vram_budget=vram_budget, ram_budget=ram_budget,
        notes=plan.notes + (note,), devices=_devices(hw) if m.n_gpu_layers else (),
    )
