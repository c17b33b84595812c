"""From a model name and the user's options to a plan, and from a plan to a loaded engine: the one path that
`run`, `chat`, `serve` and `bench` take.

    plan = plan_model("Llama-3.2-1B-Instruct", ctx=4096)   # a store name, package folder, .gguf or None
    with Engine.load(plan) as engine: ...

Every override (GPU layers, context, KV cache type, threads, slots) goes through the planner, so what a command
reports is what the planner decided and the engine loaded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .hardware import HardwareProfile, cpu_load, detect
from .models import ModelRef, resolve_model, verify_file
from .plan import Plan, make_plan
from .runtime import Engine


def plan_model(
    model: str | Path | ModelRef | None,
    *,
    ctx: int | None = None,
    kv_type: str | None = None,
    ngl: int | None = None,
    threads: int | None = None,
    n_seq: int = 1,
    chat_template: str | None = None,
    min_speed: float | None = None,
    hw: HardwareProfile | None = None,
) -> Plan:
    """The plan for `model` on this machine (or `hw`), its chosen file checked against the package's sha256.
    `chat_template` (a format name or a Jinja file) replaces the model's own template. Without `threads`,
    the cores that other programs leave idle right now (`hardware.cpu_load`). `min_speed`: see make_plan."""
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    hw = hw or detect()
    auto_threads = threads is None
    threads, notes = choose_threads(hw, threads)
    plan = make_plan(ref, hw, ctx=ctx, kv_type=kv_type, ngl=ngl, threads=threads, n_seq=n_seq, min_speed=min_speed)
    verify_file(ref.file(plan.level))
    adaptive = hw.cpu_cores if auto_threads else 0  # chosen for the moment: chosen again before each reply
    return replace(plan, chat_template=chat_template, notes=plan.notes + notes, adaptive_threads=adaptive)


def choose_threads(hw: HardwareProfile, threads: int | None) -> tuple[int, tuple[str, ...]]:
    """`threads` if the user chose them, else the physical cores other programs leave idle now; and a note
    when that is fewer than all of them."""
    if threads is not None:
        return threads, ()
    load = cpu_load(hw.cpu_cores)
    if load.threads == hw.cpu_cores:
        return load.threads, ()
    return load.threads, (
        f"{load.threads} of {hw.cpu_cores} cores used: other programs keep {load.busy_cores:.1f} of them busy "
        "(--threads to choose)",
    )


def open_engine(model: str | Path | ModelRef | None, **overrides) -> Engine:
    """Plan `model` with `overrides` (as `plan_model` takes them) and load it."""
    return Engine.load(plan_model(model, **overrides))
