"""Get models from Hugging Face or ModelScope: only the files edgellm needs, into the hubs' own caches.

This module decides which files to fetch, checks the disk before fetching, picks the hub for a bare id,
and falls back to the cache when the hub cannot be reached; `clients` talks to the hubs' libraries.

From a checkpoint repo only what conversion reads is fetched (safetensors, config, tokenizer, a vision model's
processor settings). From a repo of GGUF files, its vision projector (mmproj) if it has one, and one level: the one named, every one with `every_level`, or else the one this machine runs
best, as the planner judges it from the levels' headers, read by byte ranges before anything is
downloaded (`remote_plan`). F16/BF16/F32 files are left out of that choice: they are bases to quantize from,
twice the download of Q8_0 for no difference a chat shows.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import EdgeError, NotEnoughSpace, UsageError
from ..fsutil import ensure_free_space
from .clients import HUBS, RemoteFile, Say, Unreachable, quiet_hub
from ..interrupt import run_interruptibly

HUB_NAMES = ("hf", "modelscope")

# What a checkpoint conversion reads, beside the weights. Top-level files only: `original/` (Meta's .pth
# release) and other sub-folders are never fetched.
CHECKPOINT_FILES = (
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",  # a vision model's image settings, for its projector
    "processor_config.json",
)
# Mistral publishes its own single-file format beside the HF shards: the same weights twice.
DUPLICATE_WEIGHTS = ("consolidated*.safetensors",)
# GGUF files that are not a model to run: vision encoders ("multimodal projector"), importance matrices.
NOT_A_MODEL_GGUF = ("mmproj*", "imatrix*")
PROJECTOR_GGUF = ("mmproj*.gguf",)
# Beside a repo's GGUF files: an edgellm package's manifest (sizes, quality) and the model card (licence).
GGUF_REPO_FILES = ("manifest.json", "README.md")
# Float levels: what a GGUF repo offers to quantize from, the smallest lossless one first.
FLOAT_LEVELS = ("BF16", "F16", "F32")

# `--hub auto`: these owners publish on ModelScope (mirrors of Meta's and others' models under their names).
MODELSCOPE_OWNERS = frozenset(
    {"LLM-Research", "AI-ModelScope", "modelscope", "damo", "iic", "ZhipuAI", "OpenBMB", "Shanghai_AI_Laboratory"}
)
# Ids written as hub URLs or with a hub prefix name their hub.
ID_PREFIXES = (
    ("https://huggingface.co/", "hf"),
    ("https://hf.co/", "hf"),
    ("hf://", "hf"),
    ("hf:", "hf"),
    ("https://www.modelscope.cn/models/", "modelscope"),
    ("https://modelscope.cn/models/", "modelscope"),
    ("modelscope://", "modelscope"),
    ("modelscope:", "modelscope"),
    ("ms:", "modelscope"),
)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Selection:
    kind: str  # "checkpoint" (safetensors to convert) or "gguf" (ready-made quant files)
    files: tuple[RemoteFile, ...]

    @property
    def names(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def levels(self) -> list[str]:
        return sorted(gguf_levels(self.files))

    @property
    def missing_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached)


@dataclass(frozen=True)
class LevelChoice:
    level: str
    size: int  # bytes of the level's files
    why: str  # one line for the user


@dataclass(frozen=True)
class Pulled:
    repo_id: str
    hub: str  # "hf" or "modelscope"
    why: str  # why that hub was used
    path: Path  # the snapshot folder in the hub's cache
    kind: str  # "checkpoint" or "gguf"
    files: tuple[str, ...]
    downloaded: int  # bytes fetched this time; 0 when everything was cached
    offline: bool
    sha256: dict[str, str] = field(default_factory=dict)  # repo path -> the hub's checksum, where it gives one
    choice: LevelChoice | None = None  # the level picked for this machine, when none was named


@dataclass(frozen=True)
class Remote:
    """A hub repo as seen now: its files as listed online, or, offline or out of reach, as cached."""

    repo_id: str
    hub: str
    why: str  # why that hub
    revision: str | None
    files: list[RemoteFile]
    offline: str | None = None  # why the cache answers ("offline", "cannot reach ModelScope"); None online
    folder: Path | None = None  # the cached snapshot, when the cache answers

    @property
    def client(self):
        return HUBS[self.hub]


# ---------------------------------------------------------------------------------------------- choosing files


def _top_level(path: str) -> bool:
    return "/" not in path


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(PurePosixPath(path).name, p) for p in patterns)


def gguf_level(path: str) -> str | None:
    """`Llama-3.2-1B-Instruct-Q4_K_M.gguf` -> "Q4_K_M" (the hubs' `<model>-<LEVEL>.gguf` convention)."""
    stem = PurePosixPath(path).stem
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)  # split files: <model>-<LEVEL>-00001-of-00003
    m = re.search(r"[-._]((?:I?Q\d|TQ\d|MXFP\d)[A-Z0-9_]*|F16|F32|BF16)$", stem, re.IGNORECASE)
    return m.group(1).upper() if m else None


def gguf_levels(files: Iterable[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """The model GGUF files by level (a level split in parts has several); a file whose name gives no
    level is a level of its own, named by its file name."""
    out: dict[str, list[RemoteFile]] = {}
    for f in files:
        if f.path.endswith(".gguf") and not _matches(f.path, NOT_A_MODEL_GGUF):
            out.setdefault(gguf_level(f.path) or PurePosixPath(f.path).stem, []).append(f)
    return out


def select_files(files: Iterable[RemoteFile], levels: Iterable[str] = ()) -> Selection:
    """Pick what conversion needs from a repo listing, or its GGUF files (all, or those of `levels`) when it
    holds no safetensors."""
    files = list(files)
    top = [f for f in files if _top_level(f.path)]
    weights = [f for f in top if f.path.endswith(".safetensors")]
    if any(not _matches(f.path, DUPLICATE_WEIGHTS) for f in weights):
        weights = [f for f in weights if not _matches(f.path, DUPLICATE_WEIGHTS)]
    wanted = {lv.upper() for lv in levels}
    if weights:
        if wanted:
            raise UsageError("holds a checkpoint, not GGUF files: choose levels when packaging it (edgellm package)")
        extras = [f for f in top if f.path in CHECKPOINT_FILES]
        return Selection("checkpoint", tuple(sorted(weights + extras, key=lambda f: f.path)))

    by_level = gguf_levels(files)
    if by_level:
        if wanted:
            chosen = {lv: fs for lv, fs in by_level.items() if lv.upper() in wanted}
            if len(chosen) < len(wanted):
                absent = sorted(wanted - {lv.upper() for lv in chosen})
                raise UsageError(f"no GGUF file at level {', '.join(absent)} (levels there: {', '.join(sorted(by_level))})")
            by_level = chosen
        ggufs = [f for fs in by_level.values() for f in fs]
        extras = [f for f in top if f.path in GGUF_REPO_FILES] + _projector(top)
        return Selection("gguf", tuple(sorted(ggufs + extras, key=lambda f: f.path)))

    found = ", ".join(sorted({PurePosixPath(f.path).suffix or f.path for f in files})) or "nothing"
    raise EdgeError(f"holds neither .safetensors nor .gguf files (found: {found}); edgellm converts safetensors")


def _projector(files: list[RemoteFile]) -> list[RemoteFile]:
    """A vision model's projector, which every level needs: the repo's one mmproj*.gguf, or of several the F16 one
    (llama.cpp's default), else the first by name."""
    found = sorted((f for f in files if _matches(f.path, PROJECTOR_GGUF)), key=lambda f: f.path)
    f16 = [f for f in found if "F16" in f.path.upper() and "BF16" not in f.path.upper()]
    return (f16 or found)[:1]


def check_complete(folder: Path, selection: Selection) -> None:
    """A checkpoint needs its config and every shard its index names (the error completes "<repo> ...")."""
    if selection.kind != "checkpoint":
        return
    names = set(selection.names)
    missing = [] if "config.json" in names else ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EdgeError(f"has a corrupt {index.name} ({exc})") from exc
        missing += sorted(s for s in shards if s not in names)
    if missing:
        raise EdgeError(f"is incomplete (missing {', '.join(missing)})")


# ------------------------------------------------------------------------------------------ which hub, which id


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as huggingface_hub reads it.

    ModelScope's SDK has no offline switch of its own, so the same variable holds for it.
    """
    from huggingface_hub import constants

    return constants.is_offline_mode()


def parse_repo_id(ref: str) -> tuple[str, str | None]:
    """`hf:org/name`, `https://modelscope.cn/models/org/name` ... -> ("org/name", hub or None)."""
    hub = None
    for prefix, name in ID_PREFIXES:
        if ref.startswith(prefix):
            ref, hub = ref[len(prefix) :], name
            break
    if hub is not None and ref.count("/") > 1:  # a URL to a file or tree inside the repo
        ref = "/".join(ref.split("/")[:2])
    ref = ref.rstrip("/")
    if not REPO_ID.match(ref):
        raise UsageError(f"not a hub repo id: {ref!r} (expected owner/name, e.g. meta-llama/Llama-3.2-1B-Instruct)")
    return ref, hub


def choose_hub(repo_id: str, hub: str = "auto", named: str | None = None) -> tuple[str, str]:
    """(hub, why). Explicit choices win; then owners known to publish on ModelScope; then EDGELLM_HUB;
    then whichever cache already holds the repo; then Hugging Face."""
    if hub != "auto":
        if hub not in HUBS:
            raise UsageError(f"unknown hub {hub!r} (choose from: auto, {', '.join(HUB_NAMES)})")
        return hub, "--hub"
    if named:
        return named, "named in the id"
    owner = repo_id.split("/", 1)[0]
    if owner in MODELSCOPE_OWNERS:
        return "modelscope", f"{owner} publishes on ModelScope"
    env = os.environ.get("EDGELLM_HUB", "").strip().lower()
    if env:
        if env not in HUBS:
            raise UsageError(f"EDGELLM_HUB={env!r} is not a hub (choose from: {', '.join(HUB_NAMES)})")
        return env, "EDGELLM_HUB"
    holding = [name for name, h in HUBS.items() if _holds(h, repo_id)]
    if len(holding) == 1:
        return holding[0], f"cached from {HUBS[holding[0]].title}"
    return "hf", "default"


def _holds(h, repo_id: str) -> bool:
    """Whether the hub's cache has a snapshot of the repo (without walking the whole cache)."""
    try:
        with quiet_hub(h, None):
            h.cached(repo_id, None)
    except Exception as exc:
        if isinstance(h.explain(exc, repo_id, None), Unreachable):
            return False
        raise
    return True


# ------------------------------------------------------------------------------------------------------ pulling


def _raise_unless_unreachable(h, exc: Exception, repo_id: str, revision: str | None) -> None:
    """Raise the user's line for a library failure; return when the hub was out of reach (the cache may serve)."""
    known = h.explain(exc, repo_id, revision)
    if isinstance(known, Unreachable):
        return
    if known is None:
        raise exc
    raise known from exc


def _cached(repo_id: str, hub: str, why: str, revision: str | None, reason: str) -> Remote:
    h = HUBS[hub]
    try:
        with quiet_hub(h, None):
            folder, files = h.cached(repo_id, revision)
    except Exception as exc:
        _raise_unless_unreachable(h, exc, repo_id, revision)
        with quiet_hub(h, None):
            others = [r for r in h.cached_repos() if r != repo_id]
        have = f"cached there: {', '.join(others[:8])}" if others else "nothing else is cached there"
        raise EdgeError(f"{reason} and {repo_id} is not in the {h.title} cache ({h.cache_dir()}); {have}") from exc
    return Remote(repo_id, hub, why, revision, files, reason, folder)


def open_repo(ref: str, hub: str = "auto", revision: str | None = None, offline: bool | None = None,
              say: Say | None = None) -> Remote:  # fmt: skip
    """The repo's file listing: from the hub, or from the cache when offline or out of reach. `say` hears
    which hub was chosen and why, before anything is fetched."""
    repo_id, named = parse_repo_id(ref)
    name, why = choose_hub(repo_id, hub, named)
    h = HUBS[name]
    offline = offline_mode() if offline is None else offline
    if say:
        say(f"{repo_id}: {h.title} ({why}){', offline' if offline else ''}")
    if offline:
        return _cached(repo_id, name, why, revision, "offline")
    try:
        with quiet_hub(h, say):
            files = h.listing(repo_id, revision)
    except Exception as exc:
        _raise_unless_unreachable(h, exc, repo_id, revision)
        return _cached(repo_id, name, why, revision, f"cannot reach {h.title}")
    return Remote(repo_id, name, why, revision, files)


# Picks the level of a GGUF repo to fetch when none is named (`remote_plan.choose_level`: the planner, above this module).
Chooser = Callable[[Remote, Say | None], LevelChoice]


def select(remote: Remote, levels: Iterable[str] = (), every_level: bool = False, say: Say | None = None,
           choose: Chooser | None = None) -> tuple[Selection, LevelChoice | None]:  # fmt: skip
    """What to fetch from `remote`: see `fetch` (`every_level` means nothing for a checkpoint). Offline, a
    GGUF repo without levels named gives the levels already in the cache; online `choose` picks one."""
    levels = tuple(levels)
    choice = None
    try:
        selection = select_files(remote.files, levels)
        if selection.kind == "gguf" and not levels and not every_level:
            cached = [f for f in selection.files if f.cached and f.path.endswith(".gguf")]
            if remote.offline and cached:
                selection = select_files(remote.files, gguf_levels(cached))  # the levels pulled before
            elif not remote.offline:
                if choose is None:
                    raise UsageError(f"holds {len(gguf_levels(selection.files))} GGUF levels: name one with --level")
                choice = choose(remote, say)
                selection = select_files(remote.files, [choice.level])
        if remote.offline:
            missing = [f.path for f in selection.files if not f.cached]
            if missing:
                raise EdgeError(f"is incomplete (missing {', '.join(missing)}); run again online to resume the download")
            check_complete(remote.folder, selection)
    except EdgeError as exc:  # keep the kind (a bad --level is a usage error)
        where = (f"{remote.offline} and the cached copy of {remote.repo_id}" if remote.offline
                 else f"{remote.repo_id} on {remote.client.title}")  # fmt: skip
        raise type(exc)(f"{where} {exc}") from exc
    return selection, choice


def download(remote: Remote, selection: Selection, verify: bool = False, say: Say | None = None,
             choice: LevelChoice | None = None) -> Pulled:  # fmt: skip
    """Fetch `selection` into the hub's cache (or take it from there, offline). Out of reach, the cache
    serves what it holds of the same selection."""
    h, repo_id = remote.client, remote.repo_id
    sums = {f.path: f.sha256 for f in selection.files if f.sha256}
    if remote.offline:
        return Pulled(repo_id, remote.hub, remote.why, remote.folder, selection.kind, tuple(selection.names), 0,
                      True, sums)  # fmt: skip
    try:
        cache = h.cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        ensure_free_space(cache, selection.missing_bytes, f"download of {repo_id}")
        with quiet_hub(h, say):
            folder = run_interruptibly(lambda: h.download(repo_id, remote.revision, selection.names, say))
            bad = sorted(set(h.mismatches(repo_id, remote.revision)) & set(selection.names)) if verify else []
    except EdgeError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise NotEnoughSpace(f"disk full while downloading {repo_id}; free space and run again to resume") from exc
        _raise_unless_unreachable(h, exc, repo_id, remote.revision)
        # Out of reach: serve the cached copy, as the hubs' own libraries do.
        cached = _cached(repo_id, remote.hub, remote.why, remote.revision, f"cannot reach {h.title}")
        return download(cached, select(cached, selection.levels)[0])
    if bad:
        how = h.forget.format(repo_id=repo_id)
        raise EdgeError(f"{repo_id}: checksum mismatch in {', '.join(bad)}; remove the repo from the cache ({how}) and pull again")
    try:
        check_complete(folder, selection)
    except EdgeError as exc:
        raise EdgeError(f"{repo_id} on {h.title} {exc}") from exc
    return Pulled(repo_id, remote.hub, remote.why, folder, selection.kind, tuple(selection.names),
                  selection.missing_bytes, False, sums, choice)  # fmt: skip


def fetch(
    ref: str,
    hub: str = "auto",
    revision: str | None = None,
    levels: Iterable[str] = (),
    offline: bool | None = None,
    say: Say | None = None,
    verify: bool = False,
    every_level: bool = False,
    choose: Chooser | None = None,
) -> Pulled:
    """Download (or find in the cache) what edgellm needs from a hub repo.

    A checkpoint repo gives its safetensors, config and tokenizer files. A GGUF repo gives the `levels`
    named, or all of them with `every_level`, or else the one `choose` picks for this machine
    (`remote_plan.choose_level`; offline: the levels already cached). `verify` hashes the files against the hub's SHA-256 sums
    afterwards (the libraries check sizes while downloading).
    """
    if verify and (offline_mode() if offline is None else offline):
        raise UsageError("verifying needs the hub's checksums: not possible offline")
    remote = open_repo(ref, hub, revision, offline, say)
    selection, choice = select(remote, levels, every_level, say, choose)
    if every_level and selection.kind == "checkpoint":
        raise UsageError(f"{remote.repo_id} holds a checkpoint, not GGUF files: --all is for GGUF repos")
    if choice and say:
        say(f"{remote.repo_id}: {choice.why}")
    return download(remote, selection, verify, say, choice)


def _repo_id_or_usage(src: str) -> None:
    try:
        parse_repo_id(src)
    except UsageError:
        raise UsageError(f"no such file or folder, and not a hub repo id: {src}") from None


# ------------------------------------------------------------------------------------------ packaging a repo


@dataclass(frozen=True)
class PackageSource:
    """What `edgellm package SRC` works from: a path to convert or quantize, or, for a GGUF repo whose
    levels were all there, the store entry they were registered as (nothing to package)."""

    path: Path | None = None
    name: str | None = None  # the model's name, where the path does not tell it (a snapshot or a cached file)
    registered: Path | None = None
    note: str = ""  # what happened and why, for the user


def package_source(src: str, levels: list[str] | None, say: Say | None = None) -> PackageSource:
    """The source of a package, pulling a hub repo first with only what the levels need.

    A GGUF repo is already quantized, and requantizing a quantized file only loses quality (llama-quantize
    refuses it without --allow-requantize, Ollama outright), so: when the repo has every level asked for,
    those files are fetched and registered in the store as they are, and nothing is packaged; when levels are
    missing (or none were named), the repo's float level (BF16, F16 or F32) is fetched and the levels are
    quantized from it, as llama-quantize would; with no float level that is refused before any download.
    `levels` None means the package's default set.
    """
    from ..store.store import snapshot_name

    path = Path(src).expanduser()
    if path.exists():
        return PackageSource(path, snapshot_name(path))
    _repo_id_or_usage(src)
    remote = open_repo(src, say=say)
    have = {lv.upper(): lv for lv in gguf_levels(remote.files)}
    if not have or _holds_checkpoint(remote):
        pulled = download(remote, select(remote)[0], say=say)  # a checkpoint, or select's error for this repo
        return PackageSource(pulled.path, snapshot_name(pulled.path))

    from ..store import store

    repo = remote.repo_id
    if levels and all(lv.upper() in have for lv in levels):
        pulled = download(remote, select(remote, [have[lv.upper()] for lv in levels])[0], say=say)
        entry = store.register(pulled)
        return PackageSource(registered=entry, note=(
            f"{repo} holds GGUF files that are already quantized: registered {', '.join(levels)} in the store as "
            f"{entry.name} (edgellm chat {entry.name}) and packaged nothing. Quantizing them again would only lose "
            "quality; to make other levels, package a float GGUF or the original checkpoint."
        ))  # fmt: skip
    base = next((have[f] for f in FLOAT_LEVELS if f in have), None)
    asked = f"level{'s' if levels and len(levels) > 1 else ''} {', '.join(levels)}" if levels else "the default levels"
    if base is None:
        absent = [lv for lv in levels or () if lv.upper() not in have]
        raise UsageError(
            f"{repo} holds only quantized GGUF files (levels: {', '.join(sorted(have.values()))}) and no F16, BF16 or "
            f"F32 file to make {', '.join(absent) or asked} from; requantizing a quantized file loses quality, so "
            f"choose among its levels (--levels), or package the original checkpoint"
        )
    parts = gguf_levels(remote.files)[base]
    if len(parts) > 1:
        raise UsageError(f"{repo}'s {base} level is split in {len(parts)} files; package the original checkpoint instead")
    pulled = download(remote, select(remote, [base])[0], say=say)
    from ..store.store import store_name

    return PackageSource(pulled.path / parts[0].path, store_name(repo), note=(
        f"{repo} holds GGUF files: quantizing {asked} from its {base} file, as llama-quantize would "
        "(its quantized files are not quantized again)"
    ))  # fmt: skip



def _holds_checkpoint(remote: Remote) -> bool:
    try:
        return select_files(remote.files).kind == "checkpoint"
    except EdgeError:
        return False
