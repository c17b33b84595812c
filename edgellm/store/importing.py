"""`edgellm import`: GGUF models that already live on this machine, put in the store without a copy.

Other tools keep models in their own places: the Hugging Face cache (`models--<owner>--<name>/snapshots/
<commit>/*.gguf`), LM Studio's models folder (`<publisher>/<repo>/*.gguf`), Ollama's blob store
(`blobs/sha256-<digest>`, files without a .gguf name, named by the manifests under `manifests/`). This module
finds the model files under a path by their GGUF magic, groups them into models (one per folder, one per
Ollama manifest), reads and checks each header, and hands the store links to them with their sha256. A model
split in several files (`llama-gguf-split`) is one level: every part is read, checked, hashed and linked.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeError, UsageError
from ..fsutil import human_bytes
from ..formats.gguf_checks import check
from ..formats.gguf_info import GGUFInfo, read_gguf
from ..formats.gguf_split import is_later_part, orphans, split_name
from .manifest import sha256_file

MAGIC = b"GGUF"
MAX_FILES = 200_000  # files looked at under one path: a models folder, not a whole disk
MAX_DEPTH = 8
SAY_HASHING = 1 << 30  # files this big get a line before they are hashed
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_BLOB = re.compile(r"^sha256-([0-9a-f]{64})$")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Model:
    """A model found: its proposed store name, where it was found, and its files by level."""

    name: str
    origin: Path  # the folder (or Ollama manifest, or file) it stands for
    files: dict[str, Path]  # level -> GGUF file
    infos: dict[str, GGUFInfo]
    projector: GGUFInfo | None = None  # a vision model's projector (mmproj) found beside it


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def clean_name(text: str) -> str:
    """A store name from a model's name: `bartowski/Llama-3.2-1B-Instruct-GGUF` -> `Llama-3.2-1B-Instruct`."""
    from .store import store_name

    name = re.sub(r"[^\w.-]+", "-", store_name(text.strip())).strip("-.")
    return name or "model"


# --------------------------------------------------------------------------------------------------- finding


def _ollama_root(path: Path) -> Path | None:
    """The Ollama models folder `path` is, or is inside (blobs/ and manifests/ side by side)."""
    for p in (path, *path.parents)[:3]:
        if (p / "blobs").is_dir() and (p / "manifests").is_dir():
            return p
    return None


def _ollama_manifests(root: Path) -> dict[Path, str]:
    """Ollama's model blobs -> their names (`library/llama3.2/latest` -> `llama3.2`, `.../3b` -> `llama3.2-3b`)."""
    names: dict[Path, str] = {}
    for m in sorted((root / "manifests").rglob("*")):
        try:
            layers = json.loads(m.read_text()).get("layers", []) if m.is_file() else []
        except (OSError, ValueError, AttributeError):
            continue
        where = m.relative_to(root / "manifests").parts  # registry, namespace, model, tag
        if len(where) < 2:
            continue
        model, tag = where[-2], where[-1]
        for layer in layers if isinstance(layers, list) else []:
            digest = str(layer.get("digest", "")) if isinstance(layer, dict) else ""
            if layer.get("mediaType") == OLLAMA_MODEL and digest.startswith("sha256:"):
                blob = root / "blobs" / digest.replace(":", "-")
                names.setdefault(blob, clean_name(model if tag == "latest" else f"{model}-{tag}"))
    return names


def _walk(root: Path) -> list[Path]:
    """The files under `root` that start with the GGUF magic. An HF cache's blobs/ is left out (its files
    are reached through the snapshots, under their names); so are hidden folders."""
    found, seen = [], 0
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and not (d == "blobs" and here.name.startswith("models--"))
            and len(here.parts) - base_depth < MAX_DEPTH
        )  # fmt: skip
        for f in sorted(filenames):
            seen += 1
            if seen > MAX_FILES:
                raise UsageError(f"more than {MAX_FILES} files under {root}: point at a models folder")
            if _is_gguf(here / f):
                found.append(here / f)
    return found


def _group_name(folder: Path) -> str:
    from .store import snapshot_name

    return clean_name(snapshot_name(folder) or folder.name)


def find_models(path: Path, say: Say) -> list[Model]:
    """The models under `path` (a folder or one file), each file's header read and checked."""
    path = path.expanduser().absolute()
    if not path.exists():
        raise UsageError(f"no such file or folder: {path}")
    ollama = _ollama_root(path if path.is_dir() else path.parent)
    names = _ollama_manifests(ollama) if ollama else {}
    if path.is_file():
        if not _is_gguf(path):
            raise UsageError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
        if (part := split_name(path.name)) and is_later_part(path.name):
            raise UsageError(f"{path.name} is part {part.no} of {part.count} of a split model: import its first part, {part.first}")
        files = [path]
    else:
        files = _walk(path)
    groups: dict[tuple[str, Path], list[Path]] = {}
    for f in files:
        if ollama and f.parent == ollama / "blobs":
            key = (names.get(f, ""), f)  # each blob is a model; named from its manifest, else from its header
        elif path.is_file():
            key = ("", f)  # named from its header
        else:
            key = (_group_name(f.parent), f.parent)
        groups.setdefault(key, []).append(f)
    models = [m for (name, origin), fs in groups.items() if (m := _model(name, origin, fs, say))]
    if not models:
        raise UsageError(f"no GGUF model files under {path}")
    return models


def _model(name: str, origin: Path, files: list[Path], say: Say) -> Model | None:
    levels: dict[str, Path] = {}
    infos: dict[str, GGUFInfo] = {}
    for first in orphans([f.name for f in files]):
        say(f"skipped the parts of {first} in {origin}: that first part is missing")
    projector = None
    for f in files:
        if is_later_part(f.name):
            continue  # read, checked and linked with its first part
        why, info = _unusable(f)
        if info is not None and is_projector(info):
            if projector is None:
                projector = info
            else:
                say(f"skipped {f}: a second projector beside {projector.path.name}")
            continue
        level = None if why else (info.file_type or "unknown").removeprefix("ALL_")
        if not why and level in levels:
            why = f"a second {level} file beside {levels[level].name}"
        if why:
            say(f"skipped {f}: {why}")
            continue
        levels[level], infos[level] = f, info
    if not levels:
        if projector is not None:
            say(f"skipped {projector.path}: a projector without a model beside it")
        return None
    first = next(iter(infos.values()))
    return Model(name or clean_name(first.name or first.path.stem), origin, levels, infos, projector)


def is_projector(info: GGUFInfo) -> bool:
    """A vision projector (mmproj) GGUF: older ones say so only by their architecture."""
    return info.metadata.get("general.type") == "mmproj" or info.arch == "clip"


def _unusable(f: Path) -> tuple[str | None, GGUFInfo | None]:
    """Why `f` is not a model to run or a projector (or None), and its header."""
    try:
        info = read_gguf(f)
        if is_projector(info):
            return None, info  # goes with the model beside it (the model checks do not apply)
        info = check(info)
    except EdgeError as exc:
        return str(exc), None
    kind = info.metadata.get("general.type", "model")
    if kind != "model":
        return f"a {kind} GGUF, not a model to run", None
    return None, info


# ------------------------------------------------------------------------------------------------- importing


def import_models(path: Path, name: str | None, say: Say, mmproj: Path | None = None) -> list[Path]:
    """Put the models found under `path` in the store as links; the entries' folders. `mmproj` is the
    projector GGUF of the one model found (a folder's mmproj-*.gguf is found by itself)."""
    from dataclasses import replace

    from . import store
    from .models import resolve_model

    models = find_models(Path(path), say)
    if name is not None and len(models) > 1:
        found = ", ".join(m.name for m in models)
        raise UsageError(f"{path} holds {len(models)} models ({found}): --name names one; import them one by one")
    if mmproj is not None:
        if len(models) > 1:
            raise UsageError(f"{path} holds {len(models)} models: --mmproj goes with one; import them one by one")
        _, info = _unusable(Path(mmproj).absolute()) if Path(mmproj).is_file() else (None, None)
        if info is None or not is_projector(info):
            raise UsageError(f"--mmproj {mmproj} is not a vision projector GGUF (general.type mmproj)")
        models = [replace(models[0], projector=info)]
    entries = []
    for m in models:
        base = clean_name(name) if name is not None else m.name
        links, sums = {}, {}
        named = [(f"{base}-{level}", info) for level, info in m.infos.items()]
        if m.projector is not None:
            named.append((f"mmproj-{base}-{(m.projector.file_type or 'F16').removeprefix('ALL_')}", m.projector))
        for stem, info in named:
            for link, f in _links(stem, info).items():
                if f.stat().st_size >= SAY_HASHING:
                    say(f"hashing {f.name} ({human_bytes(f.stat().st_size)})…")
                sha = sha256_file(f)
                digest = OLLAMA_BLOB.match(f.name)
                if digest and digest.group(1) != sha:
                    raise EdgeError(f"{f} does not hash to its Ollama digest: the blob is damaged (ollama pull it again)")
                links[link], sums[link] = f, sha
        entry = store.add_imported(base, links, sums, str(m.origin), rename_on_clash=name is None)
        resolve_model(entry)  # the headers read through the links: what chat and run will open
        entries.append(entry)
    return entries


def _links(stem: str, info: GGUFInfo) -> dict[str, Path]:
    """The store's names for a level's files: `<stem>.gguf`, or for a split level each part under the name
    llama.cpp finds it by (`<stem>-00002-of-00003.gguf`), whatever the parts are called where they are."""
    if not info.parts:
        return {f"{stem}.gguf": info.path}
    n = len(info.parts)
    return {f"{stem}-{i:05d}-of-{n:05d}.gguf": p for i, p in enumerate(info.parts, start=1)}
