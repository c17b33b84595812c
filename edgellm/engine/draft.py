"""`--draft auto|ngram|MODEL|off`: what an engine speculates with, planned beside the model it speeds up.

A draft model must have the target's vocabulary (checked by content: every token's text, not the name) and be at
least DRAFT_RATIO times smaller, else checking its guesses costs more than it saves; `auto` takes the smallest such
model among the store's packages and the demo model, or n-gram lookup when there is none. The draft is planned on
the memory the target's plan leaves (its weights and its KV cache for the same context, on the same devices): a
draft that does not fit there is dropped with a note, and n-gram lookup is used instead. Left out (None), `--draft`
is what `edgellm tune --draft` found pays for the model's file on this machine, else off. Models with recurrent
layers (Qwen3.5, LFM2, Granite 4 hybrids) do not speculate: their state cannot be rolled back past a rejected guess.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import EdgeError, NotEnoughSpace, UsageError
from ..fsutil import human_bytes
from ..plan.hardware import HardwareProfile, detect
from ..plan.planner import Plan, make_plan
from ..plan.tune import lookup_draft
from ..store.models import ModelRef, default_model_path, resolve_model
from .runtime import Engine
from .speculate import DRAFT_MAX, DRAFT_MIN, Speculation, check_vocabulary, vocab_fingerprint

DRAFT_RATIO = 4  # a draft's weights must be this many times smaller than the target's
MODES = ("auto", "ngram", "off")


@dataclass(frozen=True)
class DraftChoice:
    """What to speculate with: "off", "ngram" or a draft model's plan; and the notes that say why."""

    kind: str
    plan: Plan | None = None
    notes: tuple[str, ...] = ()


def _candidates() -> list[ModelRef]:
    """Models a draft may come from: the store's packages and the demo model."""
    from ..store import store

    refs = []
    for name in store.names():
        try:
            refs.append(resolve_model(name))
        except EdgeError:
            continue  # a damaged entry is no candidate
    try:
        refs.append(resolve_model(default_model_path()))
    except EdgeError:
        pass
    return refs


def _weights(path: Path, refs: list[ModelRef]) -> int:
    for ref in refs:
        for f in ref.files:
            if f.path == path:
                return f.info.tensor_bytes
    from ..formats.gguf_info import read_gguf

    return read_gguf(path).tensor_bytes


def pick_auto(target: Plan) -> tuple[ModelRef | None, str]:
    """The smallest level of any model with the target's vocabulary and at most 1/DRAFT_RATIO of its weights, as a
    one-level ModelRef; or None and why."""
    refs = _candidates()
    target_path = Path(target.path).resolve()
    limit = _weights(target_path, refs) // DRAFT_RATIO
    from ..formats.gguf_info import read_gguf

    n_vocab = read_gguf(target_path).n_vocab
    fitting = sorted(
        ((f.info.tensor_bytes, ref, f) for ref in refs for f in ref.files
         if f.info.n_vocab == n_vocab and f.info.tensor_bytes <= limit and f.path.resolve() != target_path),
        key=lambda x: x[0],
    )
    if not fitting:
        return None, f"no model in the store is {DRAFT_RATIO}x smaller with the same vocabulary size"
    fingerprint = vocab_fingerprint(target_path)
    seen: set[Path] = set()
    for _, ref, f in fitting:
        if f.path.resolve() in seen:
            continue
        seen.add(f.path.resolve())
        try:
            if vocab_fingerprint(f.path) == fingerprint:
                return replace(ref, files=(f,), skipped=()), ""
        except EdgeError:
            continue
    return None, f"no model in the store that is {DRAFT_RATIO}x smaller has the same vocabulary"


def _resolve_named(target: Plan, name: str) -> ModelRef:
    """The smallest level of the model `name`, refused when its vocabulary is not the target's."""
    ref = resolve_model(name)
    f = min(ref.files, key=lambda x: x.info.tensor_bytes)
    check_vocabulary(target.path, f.path)
    return replace(ref, files=(f,), skipped=())


def _left_over(hw: HardwareProfile, target: Plan) -> HardwareProfile:
    """`hw` with the target's RAM and device memory taken."""
    ram = max(0, hw.ram_available - target.memory.ram)
    vram = target.memory.vram
    gpus = []
    for g in hw.gpus:
        take = min(vram, g.free) if (not target.devices or g.device in target.devices) else 0
        vram -= take
        gpus.append(replace(g, free=g.free - take))
    return replace(hw, ram_available=ram, gpus=tuple(gpus))


def plan_draft(target: Plan, ref: ModelRef, hw: HardwareProfile) -> Plan:
    """The draft's plan on what the target leaves: the same context and KV type, threads and devices."""
    return make_plan(ref, _left_over(hw, target), ctx=target.n_ctx, kv_type=target.kv_type, threads=target.n_threads,
                     min_speed=0)


def choose(target: Plan, draft: str, hw: HardwareProfile | None = None) -> DraftChoice:
    """What `--draft` means for `target`: off, n-gram lookup, or a draft model planned beside it."""
    if draft == "off":
        return DraftChoice("off")
    if target.memory.recurrent:
        # a rejected guess must leave the cache; llama.cpp keeps no earlier states of recurrent layers to go back to
        why = "llama.cpp cannot take rejected guesses back out of this model's recurrent state"
        if draft == "auto":
            return DraftChoice("off", notes=(f"speculation off: {why}",))
        raise UsageError(f"--draft {draft}: {why}")
    if draft == "ngram":
        return DraftChoice("ngram", notes=("speculation: n-gram lookup",))
    if draft == "auto":
        ref, why = pick_auto(target)
        if ref is None:
            return DraftChoice("ngram", notes=(f"speculation: n-gram lookup ({why})",))
    else:
        ref = _resolve_named(target, draft)
    what = f"{ref.name} {ref.files[0].level} ({ref.files[0].path.name})"
    try:
        plan = plan_draft(target, ref, hw or detect())
    except NotEnoughSpace as exc:
        return DraftChoice("ngram", notes=(f"draft {what} dropped: it does not fit beside the model ({exc}); "
                                           "n-gram lookup instead",))
    return DraftChoice("model", plan, (f"speculation: draft model {what} ({plan.gpu_layers} layers on the GPU)"
                                       if plan.n_gpu_layers else f"speculation: draft model {what}",))


def speculation(choice: DraftChoice, draft_min: int = DRAFT_MIN, draft_max: int = DRAFT_MAX) -> Speculation | None:
    """Load what `choice` says (the draft model, if any) as a Speculation for Engine.use_speculation."""
    if choice.kind == "off":
        return None
    draft = Engine.load(choice.plan) if choice.kind == "model" else None
    return Speculation(draft, draft_min, draft_max)



TUNED = "found to pay here by `edgellm tune`"


def tuned(target: Plan, draft: str | None, hw: HardwareProfile | None = None) -> tuple[str, bool]:
    """`--draft` as given, or when left out what `tune --draft` saved for the target's file here (else "off"); and
    whether it came from tune."""
    if draft is not None:
        return draft, False
    saved = lookup_draft(Path(target.path), (hw or detect()).machine_id)
    return (saved, True) if saved and saved != "off" else ("off", False)


def _said(choice: DraftChoice, from_tune: bool) -> tuple[str, ...]:
    """The choice's notes, each saying so where tune's saved draft chose it."""
    return tuple(f"{n} ({TUNED})" for n in choice.notes) if from_tune else choice.notes


def for_plan(target: Plan, draft: str | None, draft_min: int = DRAFT_MIN, draft_max: int = DRAFT_MAX) -> tuple[Speculation | None, tuple[str, ...]]:
    """`--draft` (None: the tuned one) and its lengths for a model about to load with `target`: the Speculation
    (None: off) and the notes to show (which draft, or why none)."""
    check_lengths(draft_min, draft_max)
    draft, from_tune = tuned(target, draft)
    if draft == "off":
        return None, ()
    try:
        choice = choose(target, draft)
    except EdgeError as exc:
        if not from_tune:
            raise
        return None, (f"the draft {TUNED} cannot be used now ({exc}): no speculation",)
    return speculation(choice, draft_min, draft_max), _said(choice, from_tune)


def planned(target: Plan, draft: str | None, hw: HardwareProfile | None = None) -> tuple[DraftChoice, tuple[str, ...]]:
    """What `--draft` (None: the tuned one) would speculate with beside `target`, planned but not loaded, and the
    notes that say so, with the draft model's memory."""
    draft, from_tune = tuned(target, draft, hw)
    choice = choose(target, draft, hw)
    notes = _said(choice, from_tune)
    if choice.plan is not None:
        m = choice.plan.memory
        gpu = f", {human_bytes(m.vram)} on the GPU" if m.vram else ""
        notes += (f"the draft takes {human_bytes(m.ram)} of RAM{gpu} beside the model "
                  f"(weights {human_bytes(m.weights_cpu + m.weights_gpu)}, KV {human_bytes(m.kv_cpu + m.kv_gpu)})",)
    return choice, notes


def check_lengths(draft_min: int, draft_max: int) -> None:
    """--draft-min and --draft-max, before anything loads."""
    if draft_min > draft_max:
        raise UsageError(f"--draft-min ({draft_min}) is more than --draft-max ({draft_max})")


def serving_speculation(target: Plan, draft: str | None, draft_min: int = DRAFT_MIN, draft_max: int = DRAFT_MAX) -> tuple[Speculation | None, tuple[str, ...]]:
    """`--draft` for a server: its slots guess by n-gram lookup (a draft model would need a sequence per slot
    too); a draft model named is still checked, and n-gram lookup used in its place. Left out, n-gram lookup where
    tune found it pays (a tuned draft model says nothing of n-gram lookup)."""
    check_lengths(draft_min, draft_max)
    notes = serving_notes(target, draft)
    if not notes or target.memory.recurrent:
        return None, notes
    if draft not in (*MODES, None):
        _resolve_named(target, draft)
    return Speculation(None, draft_min, draft_max), notes


def serving_notes(target: Plan, draft: str | None) -> tuple[str, ...]:
    """What `serving_speculation` does with `--draft`, in words (nothing: no speculation)."""
    if draft is None:
        return (f"speculation: n-gram lookup per slot ({TUNED})",) if tuned(target, None)[0] == "ngram" else ()
    if draft == "off":
        return ()
    if target.memory.recurrent:
        return choose(target, draft).notes  # auto: off, saying why; n-gram lookup or a draft model: refused
    why = "" if draft == "ngram" else " (a server's slots guess by n-gram lookup; draft models speed up run, chat and bench)"
    return (f"speculation: n-gram lookup per slot{why}",)
