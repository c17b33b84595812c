"""A model made ready to serve: planned for its slots (each slot's share of the context), loaded, and given its
scheduler. The one-model server does this once at start; the store server for each model a request names."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..engine.draft import serving_speculation
from ..engine.embedding import LazyEmbedder
from ..engine.launch import plan_model
from ..engine.reasoning import thinks
from ..engine.runtime import Engine
from ..errors import UsageError
from ..plan.hardware import HardwareProfile
from ..plan.planner import Plan
from ..store.models import ModelRef
from .api import ServeState
from .metrics import Metrics
from .scheduler import Scheduler

CTX_STEP = 256  # llama.cpp rounds each sequence's share of the context up to this


@dataclass(frozen=True)
class LoadOptions:
    """How every served model is planned and loaded (the serve command's options)."""

    parallel: int = 4
    ctx: int | None = None  # tokens per slot (None: the planned context shared by the slots)
    max_queue: int = 64
    ngl: int | str | None = "auto"
    devices: tuple[str, ...] | None = None
    threads: int | None = None
    chat_template: str | None = None
    min_speed: float | None = None
    rpc: str | None = None
    loras: tuple[tuple[Path, float], ...] = ()
    api_key: str | None = None
    draft: str | None = None  # --draft, None: what tune saved (edgellm.engine.draft.serving_speculation)
    draft_min: int = 1
    draft_max: int = 16
    think: bool | None = None  # --think/--no-think: a thinking model's default where its template has the switch
    image_urls: bool = False  # --allow-image-urls: pictures named by http(s) URL are fetched
    ranks: bool = False  # the model is a reranker (set by `options_for`)


def options_for(ref: ModelRef, o: LoadOptions) -> LoadOptions:
    """`o` as `ref` is served: a reranker scores one pair at a time in its own context, so it takes one slot
    (its trained context is often too short to share)."""
    return replace(o, parallel=1, ranks=True) if all(f.info.ranks for f in ref.files) else o


def plan_slots(ref: ModelRef, o: LoadOptions, hw: HardwareProfile | None = None) -> tuple[Plan, int]:
    """The plan for `ref` with `o.parallel` slots, and the tokens each slot holds (load it with `load`)."""
    per_slot = -(-o.ctx // CTX_STEP) * CTX_STEP if o.ctx else None
    plan = plan_model(ref, ctx=per_slot * o.parallel if per_slot else None, ngl=o.ngl, devices=o.devices, threads=o.threads, n_seq=o.parallel,
                      chat_template=o.chat_template, min_speed=o.min_speed, rpc=o.rpc, loras=o.loras, hw=hw)
    n_ctx_train = next(f.info.n_ctx_train for f in ref.files if f.path == plan.path)
    if per_slot:  # the planner judged the total against the training context; what matters is each slot's
        plan = replace(plan, notes=tuple(n for n in plan.notes if not n.startswith(f"{plan.n_ctx} tokens is more than")))
    else:
        per_slot = plan.n_ctx // o.parallel // CTX_STEP * CTX_STEP
        if per_slot < CTX_STEP:
            raise UsageError(f"the planned context of {plan.n_ctx} tokens is too small for {o.parallel} slots: lower --parallel")
    if n_ctx_train and per_slot > n_ctx_train:
        plan = replace(plan, notes=plan.notes + (f"{per_slot} tokens per slot is more than the {n_ctx_train} the model was trained on: quality may drop",))
    return plan, per_slot


def load(plan: Plan, per_slot: int, o: LoadOptions, projector: Path | None = None) -> Engine:
    engine = Engine.load(replace(plan, n_ctx=per_slot * o.parallel), projector)
    try:
        engine.use_speculation(serving_speculation(engine.info.plan, o.draft, o.draft_min, o.draft_max)[0])
    except BaseException:
        engine.close()
        raise
    return engine


def ready(engine: Engine, plan: Plan, model_id: str, o: LoadOptions, metrics: Metrics) -> ServeState:
    """A loaded engine with its scheduler (not yet started) and embedding context (made when first asked for)."""
    scheduler = Scheduler(engine, o.parallel, o.max_queue, metrics)
    embedder = LazyEmbedder(engine.model, scheduler.n_ctx_slot, engine.info.n_threads, o.ranks)
    return ServeState(engine, scheduler, metrics, model_id, plan.to_dict(), o.parallel, scheduler.n_ctx_slot, o.api_key, int(time.time()), embedder,
                      thinks(engine.chat_template), o.think, o.image_urls)


def unload(state: ServeState) -> None:
    """Stop the scheduler (its jobs end with an error), then free the embedding context and the model."""
    state.scheduler.stop()
    state.embedder.close()  # before the engine frees the model it reads
    state.engine.close()
