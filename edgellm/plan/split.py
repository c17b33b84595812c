"""Planning a model over this machine and `edgellm worker`s (llama.cpp's RPC backend).

As much stays here as fits: a model that fits this machine is planned as usual and the workers stay idle.
Otherwise the fewest layers that make it fit are offloaded: llama.cpp offloads the last layers (and the
output layer) to its devices in order, so the first layers run here on the CPU, the next ones on this machine's
GPUs (a discrete GPU's memory is not the RAM), and the last ones on the workers, shared in proportion to what
each device has. Every device holds its own compute buffer. The level is the highest-quality
one that fits this way; the context shrinks by halves first, as on one machine.
"""

from __future__ import annotations

from dataclasses import replace

from ..engine.adapters import LoraAdapter
from ..engine.rpc import WorkerInfo
from ..errors import NotEnoughSpace
from ..fsutil import human_bytes
from ..store.models import ModelRef
from .hardware import HardwareProfile
from .memory import MemoryEstimate, estimate
from .planner import DEFAULT_CTX, MIN_CTX, Plan, WorkerShare, _contexts, lora_bytes, make_plan, memory_budgets
from .speed import machine_speed, predict_split

WORKER_SHARE_MARGIN = 0.05  # of what a worker lends: its buffers are several allocations, not one


def shares(n: int, budgets: list[int]) -> list[int]:
    """`n` layers dealt out in proportion to `budgets` (largest remainder), in order."""
    total = sum(budgets)
    if total <= 0:
        return [0] * len(budgets)
    exact = [n * b / total for b in budgets]
    out = [int(x) for x in exact]
    for i in sorted(range(len(budgets)), key=lambda i: exact[i] - out[i], reverse=True)[: n - sum(out)]:
        out[i] += 1
    return out


def _on_workers(m: MemoryEstimate, counts: list[int]) -> list[int]:
    """Bytes each worker holds: its share of the offloaded weights and KV cache, plus a compute buffer."""
    per_layer = (m.weights_gpu + m.kv_gpu) / max(1, sum(counts))
    return [int(c * per_layer) + m.compute_gpu if c else 0 for c in counts]


def plan_with_workers(
    model: ModelRef,
    hw: HardwareProfile,
    workers: list[WorkerInfo],
    ctx: int | None = None,
    kv_type: str | None = None,
    min_ctx: int = MIN_CTX,
    ram: int | None = None,
    ngl: int | None = None,
    threads: int | None = None,
    n_seq: int = 1,
    min_speed: float | None = None,
    loras: tuple[LoraAdapter, ...] = (),
) -> Plan:
    """Plan `model` over this machine (`ram` to simulate less) and `workers`. `ngl` fixes how many layers
    go to the workers (the output layer counts as one)."""
    n_workers = f"{len(workers)} worker{'s' if len(workers) != 1 else ''}"
    if not ngl:
        try:
            p = make_plan(model, hw, ctx=ctx, kv_type=kv_type, min_ctx=min_ctx, ram=ram, ngl=ngl, threads=threads, n_seq=n_seq,
                          min_speed=min_speed, loras=loras)
            return replace(p, notes=p.notes + (f"fits here: the {n_workers} are not needed",))
        except NotEnoughSpace:
            if ngl == 0:
                raise
    hw = hw.with_overrides(ram=ram)
    kv_type = kv_type or "f16"
    ram_budget, vram_budget = memory_budgets(hw)
    # this machine's GPUs first (an integrated one shares the RAM the CPU layers use: left out), then the workers
    gpus = [] if hw.unified_memory else [g for g in hw.offload_gpus if g.device]
    free_vram = sum(g.free for g in gpus) or 1
    sharers = [("", 0, g.device, int(vram_budget * g.free / free_vram), g.free) for g in gpus]
    # `edgellm worker` kept the OS's margin
    sharers += [(w.worker.host, w.worker.port, "", int(w.free * (1 - WORKER_SHARE_MARGIN)), w.free) for w in workers]
    budgets = [s[3] for s in sharers]
    n_ctx_train = max(f.info.n_ctx_train for f in model.files) or DEFAULT_CTX
    target = min(DEFAULT_CTX, n_ctx_train)
    contexts = [ctx] if ctx is not None else _contexts(target, min(min_ctx, target))
    for f in model.files:
        n = f.info.n_layers
        for c in contexts:
            for g in [min(ngl, n + 1)] if ngl is not None else range(1, n + 2):
                m = estimate(f.info, c, g, kv_type, n_seq=n_seq, lora=lora_bytes(loras, n))  # adapters sit beside their layers
                # layers in proportion to what is left beside each worker's compute buffer: one too small for
                # that gets none (and then needs no compute buffer either)
                counts = shares(g, [max(0, b - m.compute_gpu) for b in budgets])
                used = _on_workers(m, counts)
                if m.ram > ram_budget or any(u > b for u, b in zip(used, budgets)):
                    continue
                split = tuple(
                    WorkerShare(host, port, k, u, b, free, device) for (host, port, device, b, free), k, u in zip(sharers, counts, used)
                )
                notes = []
                if c < contexts[0]:
                    notes.append(f"context shrunk from {contexts[0]} to {c} tokens to keep {f.level}")
                if hw.unified_memory:
                    notes.append("with --rpc the integrated GPU is not used: layers run here on the CPU or on the workers")
                n_threads = threads or hw.cpu_cores
                speed = predict_split(f.info, machine_speed(hw), n_threads, sum(1 for s in split if s.n_layers and not s.device),
                                      lora_bytes(loras, n))
                return Plan(
                    name=model.name, path=f.path, parts=len(f.parts), level=f.level, n_layers=n, n_gpu_layers=g, n_ctx=c, kv_type=kv_type,
                    memory=m, ram_budget=ram_budget, vram_budget=sum(budgets),
                    hardware=hw.summary() + (" (simulated)" if hw.simulated else "") + f" + {n_workers}",
                    notes=tuple(notes), n_threads=n_threads, n_seq=n_seq, workers=split, speed=speed,
                    devices=tuple(s.device for s in split if s.device and s.n_layers), loras=loras,
                    why="the highest-quality level that fits here and on the workers",
                )
    smallest = min(model.files, key=lambda f: f.size)
    m = estimate(smallest.info, contexts[-1], 0, kv_type, n_seq=n_seq)
    raise NotEnoughSpace(
        f"{model.name} does not fit here and on the {n_workers}: its smallest level {smallest.level} needs about "
        f"{human_bytes(m.ram)} at a {contexts[-1]}-token context, and there is {human_bytes(ram_budget)} usable here + "
        f"{human_bytes(sum(budgets))} on the workers" + (f" (with {ngl} layers on the workers)" if ngl is not None else "")
    )
