"""From a model name and the user's options to a plan, and from a plan to a loaded engine: the one path that
`run`, `chat`, `serve` and `bench` take.

    plan = plan_model("Llama-3.2-1B-Instruct", ctx=4096)   # a store name, package folder, .gguf or None
    with Engine.load(plan) as engine: ...

Every override (GPU layers, context, KV cache type, threads, slots) goes through the planner, so what a command
reports is what the planner decided and the engine loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .adapters import read_adapters
from ..errors import EdgeError, UsageError
from ..plan.hardware import HardwareProfile, cpu_load, detect
from ..plan.planner import Plan, make_plan
from ..store.models import ModelRef, resolve_model, verify_file, verify_projector
from .runtime import Engine
from ..plan.tune import Settings, lookup


def with_projector(model: str | Path | ModelRef | None, mmproj: str | Path | None, images: bool) -> ModelRef:
    """`model` resolved, with `mmproj` as its projector where given; checked against the model before anything loads.
    `images`: pictures are to be shown, so a model without a projector is refused here."""
    from .vision import check_projector

    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    if mmproj is not None:
        ref = replace(ref, projector=Path(mmproj))
    else:
        try:
            verify_projector(ref)
        except EdgeError as exc:  # the text model is still whole: it runs without pictures
            if images:
                raise
            ref = replace(ref, projector=None, skipped=ref.skipped + (f"{exc}: images are off",))
    if ref.projector is not None:
        check_projector(ref.projector, ref.files[0].info)
    elif images:
        raise UsageError(
            f"{ref.name} takes no images: it has no projector (give a vision model's mmproj GGUF with --mmproj)"
        )
    return ref


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
    loras: Sequence[tuple[Path, float]] = (),
    hw: HardwareProfile | None = None,
    rpc: str | None = None,
    devices: tuple[str, ...] | None = None,
) -> Plan:
    """The plan for `model` on this machine (or `hw`), its chosen file checked against the package's sha256.
    `chat_template` (a format name or a Jinja file) replaces the model's own template. `loras` are LoRA adapter
    files and their scales, checked against the model before anything loads. Without `threads`, the cores
    that other programs leave idle right now (`hardware.cpu_load`). `min_speed`: see make_plan."""
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    adapters = read_adapters(loras, ref.files[0].info)
    hw = hw or detect()
    auto_threads = threads is None
    threads, notes = choose_threads(hw, threads)
    if devices is not None:  # --device: these GPUs alone
        hw, device_notes = hw.only_devices(devices)
        notes = (*notes, *device_notes)
    plan_args = dict(ctx=ctx, ngl=ngl, n_seq=n_seq, min_speed=min_speed)
    while True:
        if rpc:  # HOST:PORT,...: the layers that do not fit here go to these workers
            plan = plan_over_workers(ref, hw, rpc, kv_type=kv_type, threads=threads, loras=adapters, **plan_args)
        else:
            plan = make_plan(ref, hw, kv_type=kv_type, threads=threads, loras=adapters, **plan_args)
        chosen = ref.file(plan.level)
        try:
            verify_file(chosen)
            break
        except EdgeError as exc:  # a damaged level: plan again without it, while another is left
            if len(ref.files) == 1:
                raise
            ref = ref.without(chosen, str(exc))
    adaptive = hw.cpu_cores if auto_threads else 0  # chosen for the moment: chosen again before each reply
    plan = replace(plan, chat_template=chat_template, notes=plan.notes + notes, adaptive_threads=adaptive)
    tuned = lookup(plan.path, hw.machine_id) if not plan.workers else None  # tuned for this machine alone
    return _with_tuned(plan, tuned, ref, hw, kv_type is None, {**plan_args, "loras": adapters}) if tuned else plan


def _with_tuned(plan: Plan, tuned: Settings, ref: ModelRef, hw: HardwareProfile, kv_free: bool, plan_args: dict) -> Plan:
    """`plan` with what `edgellm tune` found best for its file here, where the user's options left room: the
    KV cache type (planned again: it changes the memory), the micro-batch, and at most the tuned threads."""
    if kv_free and tuned.kv_type != plan.kv_type:
        again = make_plan(ref, hw, kv_type=tuned.kv_type, threads=plan.n_threads, **plan_args)
        if again.path == plan.path:
            plan = replace(again, chat_template=plan.chat_template, notes=plan.notes, adaptive_threads=plan.adaptive_threads)
    if plan.adaptive_threads:
        plan = replace(plan, n_threads=min(plan.n_threads, tuned.threads), adaptive_threads=tuned.threads)
    return replace(plan, n_ubatch=tuned.n_ubatch, notes=plan.notes + (f"tuned here by `edgellm tune`: {tuned.text()}",))


def plan_over_workers(ref: ModelRef, hw: HardwareProfile, rpc: str, **options) -> Plan:
    """The plan over this machine and the workers in `rpc` (HOST:PORT,...), each asked what it lends."""
    from .rpc import parse_workers, probe
    from ..plan.split import plan_with_workers

    return plan_with_workers(ref, hw, [probe(w) for w in parse_workers(rpc)], **options)


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
