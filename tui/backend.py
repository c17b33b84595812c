"""The chat's link to the runtime: plan and load a model, list the local ones with their fit."""

from __future__ import annotations

from pathlib import Path

from .worker import LoadedModel
from .state import ChatSettings, ModelChoice


def placement(n_gpu_layers: int, n_layers: int, devices: tuple[str, ...] = ()) -> str:
    """The planner counts the output layer as one more: n_layers + 1 means everything is on the GPU."""
    gpu = ", ".join(devices) or "GPU"
    if n_gpu_layers <= 0:
        return "CPU only"
    if n_gpu_layers > n_layers:
        return f"all on {gpu}"
    from edgellm.plan.planner import gpu_layers_text

    return f"{gpu_layers_text(n_gpu_layers, n_layers)} layers on {gpu}"


def open_model(
    ref: str | None, settings: ChatSettings, chat_template: str | None = None, min_speed: float | None = None, rpc: str | None = None,
    loras: tuple[tuple[Path, float], ...] = (), devices: tuple[str, ...] | None = None, draft: str | None = None,
    draft_min: int = 1, draft_max: int = 16, think: bool | None = None, projectors: dict | None = None,
) -> LoadedModel:
    """Resolve `ref`, let the planner pick file, offload and context for this machine (and `rpc` workers), and load it
    with the LoRA adapters (file, scale) given, speculating as `draft` says (`--draft`), thinking as `think` says
    where the template has the switch. `projectors`: model reference -> its projector GGUF (`--mmproj`), where the
    model's package does not hold one."""
    from edgellm.engine.draft import for_plan
    from edgellm.engine.reasoning import switch_note, thinks
    from edgellm.engine.launch import plan_model, with_projector
    from edgellm.plan.planner import threads_text
    from edgellm.engine.runtime import Engine

    model = with_projector(ref, (projectors or {}).get(ref), images=False)
    plan = plan_model(model, ctx=settings.n_ctx or None, chat_template=chat_template, min_speed=min_speed, rpc=rpc, loras=loras,
                      devices=devices)
    engine = Engine.load(plan, projector=model.projector)
    try:
        spec, notes = for_plan(plan, draft, draft_min, draft_max)
    except BaseException:
        engine.close()
        raise
    engine.use_speculation(spec)
    where = f"{plan.n_gpu_layers}/{plan.n_layers + 1} layers on {len(plan.workers)} workers" if plan.workers else None
    line = (
        f"{plan.level} chosen by the planner · {where or placement(plan.n_gpu_layers, plan.n_layers, engine.info.devices)} · ctx {engine.info.n_ctx} · "
        f"{threads_text(plan.n_threads)}"
    )
    if engine.template_origin != "the model's own":
        line += f" · chat format {engine.template_origin.split(' (')[0]}"
    lora = ", ".join(engine.info.loras)
    if lora:
        line += f" · LoRA {lora}"
    if spec is not None:
        line += f" · speculation {spec.name}"
    if model.projector is not None:
        line += " · images"
    explain = "\n".join([plan.explain(), *(f"  Note: {n}" for n in notes)])
    note = switch_note(engine.chat_template, think) or ""
    return LoadedModel(engine=engine, path=str(plan.path), plan=line, explain=explain, lora=lora, thinks=thinks(engine.chat_template),
                       think=None if note else think, note=note)


def list_models(extra: str | None = None) -> list[ModelChoice]:
    """Every level of every local model with the planner's verdict for this machine."""
    from edgellm.plan.catalog import fit_here, local_models
    from edgellm.fsutil import human_bytes
    from edgellm.plan.hardware import detect
    from edgellm.plan.planner import FIT_TEXT

    hw = detect()
    choices = []
    for ref in local_models(extra):
        plan, why = fit_here(ref, hw)
        if plan is None:  # not one level fits: the reason holds the numbers
            choices += [ModelChoice(ref.name, f.level, str(f.path), f.size, False, why) for f in ref.files]
            continue
        n_layers = {f.path: f.info.n_layers for f in ref.files}
        for lv in plan.levels:
            if lv.fit == "no":
                fit = f"does not fit: needs {human_bytes(lv.ram)} RAM + {human_bytes(lv.vram)} VRAM"
            else:
                fit = f"{FIT_TEXT[lv.fit]}: {placement(lv.n_gpu_layers, n_layers[lv.path])}, ctx {lv.n_ctx}, RAM {human_bytes(lv.ram)}"
            choices.append(ModelChoice(ref.name, lv.level, str(lv.path), lv.file_size, lv.fit != "no", fit))
    return choices
