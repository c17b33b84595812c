"""From a hub id to a model on this machine: what `edgellm chat|run|serve HUB_ID` do before they load it.

    folder = local_model("bartowski/Llama-3.2-1B-Instruct-GGUF", say)   # a store entry

A file, a folder or a store name stays as it is. A hub id first looks for the store entry made from that
repo: a second run starts at once, offline too. Otherwise the repo is planned before anything is
downloaded (`remote_plan`), then:
- a repo of GGUF files: the planned level is pulled into the hub's cache and registered (`store.register`);
- a checkpoint: what conversion reads is pulled, then converted and quantized to the planned level only,
  in a folder beside the store (`store.building_dir`); the level, its manifest and card become the entry
  and the base is removed.
Downloads show the hubs' own progress bars, converting and quantizing edgellm's. Ctrl-C ends the work with
one line (exit 130) and no file under a final name; the same command then goes on: the hubs keep finished
downloads, and a base converted before is kept until its level is made.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from ..errors import EdgeError, Interrupted, NotEnoughSpace, UsageError
from .clients import RepoNotFound, Say


def is_hub_ref(ref: str | None) -> bool:
    """Whether `ref` names a hub repo: not a file or folder here, not a store name, and written as one
    (`owner/name`, `hf:`/`ms:` or a hub URL). A path to a missing .gguf file is a path, not a repo."""
    from ..store import store
    from .download import parse_repo_id

    if ref is None or Path(ref).expanduser().exists() or store.resolve(ref) is not None or ref.endswith(".gguf"):
        return False
    try:
        parse_repo_id(ref)
    except UsageError:
        return False
    return True


def pull(ref: str, hub: str = "auto", revision: str | None = None, say: Say | None = None) -> Path:
    """The local folder holding the repo's safetensors, config and tokenizer files, or its GGUF files: for a
    GGUF repo the level the planner picks here, registered in the store. Keeps what an earlier run finished
    and serves the cache offline."""
    from ..store import store
    from .download import fetch
    from .remote_plan import choose_level

    pulled = fetch(ref, hub=hub, revision=revision, say=say, choose=choose_level)
    if pulled.kind == "gguf":
        store.register(pulled)
    return pulled.path


def local_model(ref: str | None, say: Say | None = None, progress: Callable | None = None,
                min_speed: float | None = None) -> str | None:  # fmt: skip
    """`ref` itself, or for a hub id the folder of its store entry, made first if need be. `progress()` gives
    the progress display for converting and quantizing (a context manager with `.reporter()`); `min_speed`
    the decode tokens/s the level must reach, as the planner takes it."""
    if not is_hub_ref(ref):
        return ref
    from ..store import store
    from .download import parse_repo_id

    say = say or (lambda line: None)
    repo_id, named = parse_repo_id(ref)
    entry = store.from_repo(repo_id, named)
    if entry is not None:
        say(f"{repo_id}: {entry.name} in the store")
        return str(entry)
    stage = ["planning"]
    try:
        return str(_obtain(ref, say, progress, stage, min_speed))
    except RepoNotFound as exc:
        raise UsageError(f"no such model file, package folder or store name here: {ref}; and {exc}") from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while {stage[0]} {repo_id}; run the same command again to go on") from None


def _obtain(ref: str, say: Say, progress: Callable | None, stage: list[str], min_speed: float | None) -> Path:
    from ..plan import hardware
    from ..store import store
    from ..fsutil import human_bytes
    from .download import download, open_repo, select
    from .remote_plan import PlanOptions, plan_repo

    remote = open_repo(ref, say=say)
    rp = plan_repo(remote, hardware.detect(), PlanOptions(min_speed=min_speed), say=say)
    if rp.plan is None:
        raise NotEnoughSpace(f"{remote.repo_id}: {rp.why_not}")
    row = rp.chosen
    made = ", made from its checkpoint" if rp.kind == "checkpoint" else ""
    say(f"{remote.repo_id}: {rp.level}{made}, {rp.plan.why} ({'about ' if row.estimated else ''}{human_bytes(row.size)}, "
        f"{rp.plan.n_ctx}-token context)")  # fmt: skip
    for line in rp.cost_lines():
        say(line)
    stage[0] = "downloading"
    if rp.kind == "gguf":
        return store.register(download(remote, select(remote, [rp.level])[0], say=say))
    pulled = download(remote, select(remote)[0], say=say)
    stage[0] = "converting and quantizing"
    return _build(remote, pulled, rp.level, progress)


def _build(remote, pulled, level: str, progress: Callable | None) -> Path:
    """Convert the pulled checkpoint and quantize it to `level` beside the store, then make it the entry."""
    from ..store import store
    from ..store.manifest import Manifest
    from ..store.package import CARD_FILE, PackageOptions, build_package, write_card
    from ..quantize.levels import parse_levels

    work = store.building_dir(remote.repo_id)
    work.mkdir(parents=True, exist_ok=True)
    name = store.store_name(remote.repo_id)
    opts = PackageOptions(levels=parse_levels([level]), name=name, command=f"edgellm run {remote.repo_id}")
    with progress() if progress else nullcontext() as ui:
        result = build_package(pulled.path, work, opts, ui.reporter() if ui else None)
    made = result.manifest.entry(level)
    if made is None:
        raise EdgeError(f"{remote.repo_id}: quantizing to {level} left no file")
    # The entry keeps the level: the base was the way there (the manifest still names it, with its sha256).
    manifest: Manifest = result.manifest
    manifest.files = [made]
    manifest.save(work)
    write_card(work, manifest)
    source = {"hub": remote.hub, "repo_id": remote.repo_id, "snapshot": str(pulled.path), "built": level,
              "files": {made.file: made.file}, "sha256": {made.file: made.sha256}}  # fmt: skip
    return store.add_built(remote.repo_id, work, [made.file, "manifest.json", CARD_FILE], source)
