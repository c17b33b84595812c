"""The local store: packages kept under `edgellm.paths.store_dir()`, one folder per name.

Only folders and files here: what each entry holds and whether it runs on this machine is `edgellm.catalog`'s.

An entry is a folder of `<name>-<LEVEL>.gguf` files: a package written by `edgellm package` (with its
manifest.json), or a GGUF repo pulled from a hub, whose files stay in the hub's cache and are linked here
under their own names, with the repo's manifest.json and README.md when it has them (`source.json` says
where they came from). `edgellm chat NAME` and friends find entries by their folder name.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from . import paths
from .errors import EdgeError, UsageError
from .fsutil import atomic_output

SOURCE_FILE = "source.json"  # written for entries registered from a hub


# ------------------------------------------------------------------------------------------------ finding


def _is_entry(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".") and any(folder.glob("*.gguf"))


def _valid_name(name: str) -> bool:
    """A folder name right under the store: no paths, nothing hidden."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def resolve(name: str) -> Path | None:
    """The folder of the store entry `name` (case-insensitive when unambiguous), or None."""
    if not _valid_name(name):
        return None
    root = paths.store_dir()
    exact = root / name
    if _is_entry(exact):
        return exact
    if not root.is_dir():
        return None
    matches = [p for p in root.iterdir() if p.name.lower() == name.lower() and _is_entry(p)]
    return matches[0] if len(matches) == 1 else None


def names() -> list[str]:
    root = paths.store_dir()
    return sorted(p.name for p in root.iterdir() if _is_entry(p)) if root.is_dir() else []


def _source_or_none(folder: Path) -> dict | None:
    try:
        return read_source(folder)
    except EdgeError:
        return None


def read_source(folder: Path) -> dict | None:
    """Where a hub-registered entry came from (source.json), or None for a package made here."""
    f = folder / SOURCE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError as exc:
        raise EdgeError(f"corrupt {f}: {exc}") from exc


# ------------------------------------------------------------------------------------------------ changing


@dataclass(frozen=True)
class Removed:
    name: str
    size: int  # bytes of its GGUF files (for a hub entry they stay in the hub's cache)
    source: dict | None  # where a hub-registered entry came from
    link_to: Path | None  # for a folder linked into the store: where the link pointed


def remove(name: str) -> Removed:
    """Delete the entry `name`; say what it was and, for a folder linked into the store, where the link pointed.

    Only the link goes then: the folder it points to was put there by hand and stays as it was. Files of a
    hub-registered entry stay in the hub's cache (only links go)."""
    if not _valid_name(name):
        raise UsageError(f"not a store name: {name!r}")
    folder = resolve(name)
    if folder is None:
        have = ", ".join(names()) or "the store is empty"
        raise UsageError(f"no package {name!r} in the store ({have})")
    size = sum(f.stat().st_size for f in folder.glob("*.gguf") if f.exists())
    gone = Removed(folder.name, size, _source_or_none(folder), None)
    target = folder.resolve() if folder.is_symlink() else None
    try:
        if target is not None:
            folder.unlink()
        else:
            shutil.rmtree(folder)
    except OSError as exc:
        raise EdgeError(f"could not remove {folder}: {exc.strerror or exc}") from None
    return replace(gone, link_to=target)


def store_name(repo_id: str) -> str:
    """`bartowski/Llama-3.2-1B-Instruct-GGUF` -> `Llama-3.2-1B-Instruct`."""
    name = repo_id.split("/", 1)[-1]
    for suffix in ("-GGUF", "_GGUF", ".GGUF"):
        if name.upper().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _link(target: Path, link: Path) -> None:
    try:
        os.symlink(target, link)
    except OSError:  # no symlinks (Windows without the privilege): a hard link costs no space either
        os.link(target.resolve(), link)


def register(pulled) -> Path:
    """Make a pulled GGUF repo a store entry: links into the hub's cache, under the files' own names
    (the hubs name them `<model>-<LEVEL>.gguf`), with the repo's manifest.json and model card if any."""
    root = paths.store_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = store_name(pulled.repo_id)
    folder = root / name
    theirs = folder.exists() and (read_source(folder) or {}).get("repo_id") != pulled.repo_id
    if theirs:  # a package of the same name made here, or another repo's: keep both
        name = f"{name}-{pulled.repo_id.split('/')[0]}"
        folder = root / name

    staging = root / f".{name}.registering-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        links = {}
        for repo_path in pulled.files:
            link = PurePosixPath(repo_path).name
            if link in links:  # the same name in two sub-folders
                link = repo_path.replace("/", "-")
            links[link] = repo_path
            _link(pulled.path / repo_path, staging / link)
        source = {"hub": pulled.hub, "repo_id": pulled.repo_id, "snapshot": str(pulled.path), "files": links}
        with atomic_output(staging / SOURCE_FILE) as tmp:
            tmp.write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder

