"""The local store: packages kept under `edgellm.paths.store_dir()`, one folder per name.

Only folders and files here: what each entry holds and whether it runs on this machine is `edgellm.plan.catalog`'s.

An entry is a folder of `<name>-<LEVEL>.gguf` files: a package written by `edgellm package` (with its
manifest.json), or a GGUF repo pulled from a hub, whose files stay in the hub's cache and are linked here
under their own names, with the repo's manifest.json and README.md when it has them, or a level made here
from a hub's checkpoint (`edgellm chat HUB_ID`: converted and quantized beside the store, in `.building/`,
then moved in with its manifest and card), or GGUF files found elsewhere on this machine (`edgellm
import`: another tool's models, linked, never copied). `source.json` says where the files came from and
their sha256. `edgellm chat NAME` and friends find entries by their
folder name.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from .. import paths
from ..errors import EdgeError, UsageError
from ..fsutil import atomic_output

SOURCE_FILE = "source.json"  # written for entries registered from a hub or imported


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
    """Where a hub-registered or imported entry came from (source.json), or None for a package made here."""
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


def snapshot_name(folder: Path) -> str | None:
    """The repo name of a snapshot folder in a hub cache, whose own name is a commit or a branch
    (`models--meta-llama--Llama-3.2-1B/snapshots/<commit>` -> `Llama-3.2-1B`); None for other folders."""
    folder = Path(folder).absolute()
    repo = folder.parent.parent.name  # HF: models--<owner>--<name>; ModelScope: <owner>--<name>
    if folder.parent.name == "snapshots" and "--" in repo:
        return repo.rsplit("--", 1)[1]
    return None


def _link(target: Path, link: Path) -> None:
    try:
        os.symlink(target, link)
    except OSError:  # no symlinks (Windows without the privilege): a hard link costs no space either
        try:
            os.link(target.resolve(), link)
        except OSError as exc:
            raise EdgeError(f"cannot link {target} into the store: no symlinks here, and {exc.strerror or exc}") from None


def _write_entry(folder: Path, links: dict[str, Path], source: dict, moves: dict[str, Path] | None = None) -> Path:
    """Make `folder` an entry of links (name -> target), files moved in (name -> where it is now, on the same
    file system) and its source.json, replacing it whole: it is built beside it and moved in, so a failure
    leaves the old entry (or none), never half of one."""
    staging = folder.parent / f".{folder.name}.registering-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for link, target in links.items():
            _link(target, staging / link)
        for name, now in (moves or {}).items():
            os.replace(now, staging / name)
        with atomic_output(staging / SOURCE_FILE) as tmp:
            tmp.write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _folder_for(repo_id: str) -> tuple[Path, dict | None]:
    """The entry folder for a model from the hub repo `repo_id`, and what is there now: the repo's name, or,
    where a package of that name made here or another repo's entry has it, the name and the repo's owner."""
    root = paths.store_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / store_name(repo_id)
    old = _source_or_none(folder) if folder.exists() else None
    if folder.exists() and (old or {}).get("repo_id") != repo_id:  # keep both
        folder = root / f"{folder.name}-{repo_id.split('/')[0]}"
        old = _source_or_none(folder) if folder.exists() else None
    return folder, old


def from_repo(repo_id: str, hub: str | None = None) -> Path | None:
    """The entry made from the hub repo `repo_id` (pulled, or built from its checkpoint), if every file of
    it is still there (a hub cache cleared under its links leaves an entry to make again)."""
    for name in names():
        folder = paths.store_dir() / name
        source = _source_or_none(folder) or {}
        if source.get("repo_id") == repo_id and hub in (None, source.get("hub")):
            if all(p.exists() for p in folder.glob("*.gguf")):
                return folder
    return None


def building_dir(repo_id: str) -> Path:
    """Where a model from `repo_id` is converted and quantized before it becomes an entry: beside the store,
    on the same file system (the result moves in without a copy), hidden from `names`."""
    return paths.store_dir() / ".building" / store_name(repo_id)


def add_built(repo_id: str, work: Path, keep: list[str], source: dict) -> Path:
    """Move the files `keep` of a package made in `work` (`building_dir`) into the store as the entry for
    `repo_id`, with `source` as its source.json; the rest of `work` (the base) is removed. The entry is made
    beside its final name and moved in whole."""
    folder, _ = _folder_for(repo_id)
    _write_entry(folder, {}, source, {name: work / name for name in keep})
    shutil.rmtree(work, ignore_errors=True)
    return folder


def register(pulled) -> Path:
    """Make a pulled GGUF repo a store entry: links into the hub's cache, under the files' own names
    (the hubs name them `<model>-<LEVEL>.gguf`), with the repo's manifest.json and model card if any.
    Levels pulled earlier from the same snapshot stay in the entry beside the new ones."""
    folder, old = _folder_for(pulled.repo_id)

    files: dict[str, str] = {}  # link name -> path in the repo
    sums: dict[str, str] = {}
    if old and old.get("snapshot") == str(pulled.path):
        for link, repo_path in (old.get("files") or {}).items():
            if _valid_name(link) and isinstance(repo_path, str) and (folder / link).exists():
                files[link] = repo_path
                if sha := (old.get("sha256") or {}).get(link):
                    sums[link] = sha
    for repo_path in pulled.files:
        link = PurePosixPath(repo_path).name
        if files.get(link, repo_path) != repo_path:  # the same name in two sub-folders
            link = repo_path.replace("/", "-")
        files[link] = repo_path
        if repo_path in pulled.sha256:
            sums[link] = pulled.sha256[repo_path]
    source = {"hub": pulled.hub, "repo_id": pulled.repo_id, "snapshot": str(pulled.path), "files": files, "sha256": sums}
    return _write_entry(folder, {link: pulled.path / p for link, p in files.items()}, source)


def add_imported(name: str, files: dict[str, Path], sums: dict[str, str], origin: str, rename_on_clash: bool) -> Path:
    """A store entry `name` of links to GGUF files that live elsewhere (`edgellm import`): nothing is copied.

    An entry of that name imported from the same `origin` is replaced. Any other entry of that name is kept:
    the new one is named `name-2`, `name-3`... with `rename_on_clash`, else that is an error."""
    if not _valid_name(name):
        raise UsageError(f"not a store name: {name!r}")
    root = paths.store_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder, n = root / name, 1
    while folder.exists() and (_source_or_none(folder) or {}).get("imported") != origin:
        if not rename_on_clash:
            raise UsageError(f"the store already has an entry named {name}: choose another name with --name")
        n += 1
        folder = root / f"{name}-{n}"
    source = {"imported": origin, "files": {link: str(t) for link, t in files.items()}, "sha256": sums}
    return _write_entry(folder, files, source)
