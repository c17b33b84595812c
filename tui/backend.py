"""The chat's link to the runtime: plan and load a model, list the local ones with their fit."""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import EdgeError
from edgellm.models import ModelRef, resolve_model

from .app import LoadedModel
from .state import ChatSettings, ModelChoice


def placement(n_gpu_layers: int, n_layers: int) -> str:
    if n_gpu_layers <= 0:
        return "CPU only"
    if n_gpu_layers >= n_layers:
        return f"all {n_layers} layers on GPU"
    return f"{n_gpu_layers}/{n_layers} layers on GPU"


def open_model(ref: str | None, settings: ChatSettings) -> LoadedModel:
    """Resolve `ref`, let the planner pick file, offload and context for this machine, and load it."""
    from edgellm.hardware import detect
    from edgellm.plan import make_plan
    from edgellm.runtime import Engine

    model = resolve_model(ref)
    plan = make_plan(model, detect(), ctx=settings.n_ctx or None)
    engine = Engine.load(plan)
    info = engine.info
    line = f"{info.level} chosen by the planner · {placement(info.n_gpu_layers, info.n_layers)} · ctx {info.n_ctx}"
    return LoadedModel(engine=engine, path=str(plan.path), plan=line, explain=plan.explain())


def local_models(extra: str | None = None) -> list[ModelRef]:
    """The default model, the one named on the command line, and every GGUF under edgellm's model store."""
    from edgellm.paths import store_dir

    refs: list[ModelRef] = []
    sources = [None, extra] + sorted({p.parent for p in store_dir().glob("**/*.gguf")})
    seen: set[Path] = set()
    for source in sources:
        try:
            ref = resolve_model(source)
        except EdgeError:
            continue  # no default model installed, or an unreadable folder: not a choice
        if ref.source not in seen:
            seen.add(ref.source)
            refs.append(ref)
    return refs


def list_models(extra: str | None = None) -> list[ModelChoice]:
    """Every local file with the planner's verdict for this machine."""
    from edgellm.hardware import detect
    from edgellm.plan import make_plan

    hw = detect()
    choices = []
    for ref in local_models(extra):
        for f in ref.files:
            try:
                plan = make_plan(resolve_model(f.path), hw)
            except EdgeError as exc:
                choices.append(ModelChoice(ref.name, f.level, str(f.path), f.size, False, str(exc)))
                continue
            ngl = plan.n_gpu_layers
            fit = f"fits: {placement(ngl, f.info.n_layers) if ngl >= 0 else 'all layers on GPU'}, ctx {plan.n_ctx}"
            choices.append(ModelChoice(ref.name, f.level, str(f.path), f.size, True, fit))
    return choices
