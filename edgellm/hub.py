"""Get models from Hugging Face or ModelScope: only the files conversion needs, into the hubs' own caches.

The network work is the hubs' own libraries (`huggingface_hub`, `modelscope_hub`): they keep finished
files across runs and resume cut transfers (huggingface_hub within a run, or by Xet chunks; modelscope_hub
by byte ranges across runs too), verify checksums, read the user's token and keep their usual cache layout, so a model fetched
here is shared with transformers, llama.cpp's tools and the hubs' CLIs. This module decides which files to
fetch, checks the disk before fetching, picks the hub for a bare id, and turns the libraries' failures into
one line the user can act on.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import EdgeError, NotEnoughSpace, UsageError
from .fsutil import ensure_free_space

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
)
# Mistral publishes its own single-file format beside the HF shards: the same weights twice.
DUPLICATE_WEIGHTS = ("consolidated*.safetensors",)
# GGUF repos of vision models carry the image encoder ("multimodal projector") as a GGUF of its own.
NOT_A_MODEL_GGUF = ("mmproj*",)
# Beside a repo's GGUF files: an edgellm package's manifest (sizes, quality) and the model card (licence).
GGUF_REPO_FILES = ("manifest.json", "README.md")

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
RERUN = "run the same command again to resume (finished files are kept)"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repo, "/"-separated
    size: int  # bytes
    cached: bool  # already complete in the hub's cache


@dataclass(frozen=True)
class Selection:
    kind: str  # "checkpoint" (safetensors to convert) or "gguf" (ready-made quant files)
    files: tuple[RemoteFile, ...]

    @property
    def names(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def missing_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


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


def select_files(files: Iterable[RemoteFile], levels: Iterable[str] = ()) -> Selection:
    """Pick what conversion needs from a repo listing, or its GGUF files when it holds no safetensors."""
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

    ggufs = [f for f in files if f.path.endswith(".gguf") and not _matches(f.path, NOT_A_MODEL_GGUF)]
    if ggufs:
        if wanted:
            have = sorted({gguf_level(f.path) or "?" for f in ggufs})
            ggufs = [f for f in ggufs if gguf_level(f.path) in wanted]
            if not ggufs:
                raise UsageError(f"no GGUF file at level {', '.join(sorted(wanted))} (levels there: {', '.join(have)})")
        extras = [f for f in top if f.path in GGUF_REPO_FILES]
        return Selection("gguf", tuple(sorted(ggufs + extras, key=lambda f: f.path)))

    found = ", ".join(sorted({PurePosixPath(f.path).suffix or f.path for f in files})) or "nothing"
    raise EdgeError(f"holds neither .safetensors nor .gguf files (found: {found}); edgellm converts safetensors")


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


def local_listing(folder: Path) -> list[RemoteFile]:
    """The files of a snapshot folder on disk, as a listing (links followed: HF snapshots link into blobs)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel.startswith(".cache/") or not p.is_file():
            continue
        out.append(RemoteFile(rel, p.stat().st_size, True))
    return out


# ------------------------------------------------------------------------------------------------- the hubs


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as huggingface_hub reads it.

    ModelScope's SDK has no offline switch of its own, so the same variable holds for it.
    """
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _line(exc: BaseException) -> str:
    """The first line of a library's message (some span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Unreachable(Exception):
    """The hub could not be reached: the cache may still serve."""


class HuggingFace:
    name = "hf"
    title = "Hugging Face"
    login = "`hf auth login` or HF_TOKEN"
    forget = "hf cache rm model/{repo_id}"

    def cache_dir(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)

    def listing(self, repo_id: str, revision: str | None) -> list[RemoteFile]:
        from huggingface_hub import HfApi, try_to_load_from_cache

        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        cache = self.cache_dir()
        return [
            RemoteFile(
                s.rfilename,
                s.size or 0,
                isinstance(try_to_load_from_cache(repo_id, s.rfilename, cache_dir=cache, revision=info.sha), str),
            )
            for s in info.siblings or []
        ]

    def download(self, repo_id: str, revision: str | None, names: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=names, cache_dir=self.cache_dir()))

    def cached(self, repo_id: str, revision: str | None) -> tuple[Path, list[RemoteFile]]:
        """The cached snapshot, and the repo's files as last listed online (marked cached or not)."""
        from huggingface_hub import errors, get_cached_repo_tree, snapshot_download

        cache = self.cache_dir()
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
        except errors.IncompleteSnapshotError as exc:  # files edgellm never fetches are missing too: judge below
            folder = Path(exc.snapshot_path)
        try:
            tree = get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache)
        except errors.CachedRepoTreeNotFoundError:  # a cache written without the listing: what is there
            return folder, local_listing(folder)
        return folder, [RemoteFile(f.path, f.size, (folder / f.path).is_file()) for f in tree]

    def mismatches(self, repo_id: str, revision: str | None) -> list[str]:
        """Cached files whose SHA-256 differs from the hub's (hashes them all: slow for big files)."""
        from huggingface_hub import HfApi

        result = HfApi().verify_repo_checksums(repo_id, revision=revision, cache_dir=self.cache_dir())
        return [m["path"] for m in result.mismatches]  # TypedDicts here, dataclasses in modelscope_hub

    def cached_repos(self) -> list[str]:
        from huggingface_hub import scan_cache_dir

        try:
            return sorted(r.repo_id for r in scan_cache_dir(self.cache_dir()).repos if r.repo_type == "model")
        except Exception:  # a missing or odd cache only means "nothing to list"
            return []

    def explain(self, exc: BaseException, repo_id: str, revision: str | None) -> Exception | None:
        """The user's line for a huggingface_hub failure; Unreachable when the cache may serve."""
        import httpx2
        from huggingface_hub import errors

        if isinstance(exc, errors.GatedRepoError):
            return EdgeError(
                f"{repo_id} is gated on Hugging Face: accept its licence at https://huggingface.co/{repo_id} "
                f"and log in ({self.login})"
            )
        if isinstance(exc, errors.RepositoryNotFoundError):
            return EdgeError(f"no repo {repo_id} on Hugging Face (if it is private, log in: {self.login})")
        if isinstance(exc, errors.RevisionNotFoundError):
            return EdgeError(f"{repo_id} on Hugging Face has no revision {revision}")
        if isinstance(exc, errors.IncompleteSnapshotError):
            return EdgeError(f"the cached copy of {repo_id} is incomplete; {RERUN}")
        unreachable = (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, httpx2.ConnectError, httpx2.ConnectTimeout)
        if isinstance(exc, unreachable):
            return Unreachable(str(exc))
        if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
            code = exc.response.status_code
            if code == 401:
                return EdgeError(f"Hugging Face refused the token for {repo_id}: log in again ({self.login})")
            if code == 429 or code >= 500:
                return EdgeError(f"Hugging Face answered {code} for {repo_id}; {RERUN}")
            return EdgeError(f"Hugging Face answered {code} for {repo_id}: {exc.server_message or _line(exc)}")
        if isinstance(exc, httpx2.TransportError):
            return EdgeError(f"download of {repo_id} interrupted ({_line(exc)}); {RERUN}")
        return None


class ModelScope:
    name = "modelscope"
    title = "ModelScope"
    login = "`ms login` or MODELSCOPE_API_TOKEN"
    forget = "ms cache clear"

    def _api(self):
        from modelscope_hub import HubApi

        return HubApi()

    def cache_dir(self) -> Path:
        from modelscope_hub import get_default_config

        return Path(get_default_config().cache_dir)

    def listing(self, repo_id: str, revision: str | None) -> list[RemoteFile]:
        from modelscope_hub import CacheNotFound

        api = self._api()
        remote = [f for f in api.list_repo_files(repo_id, "model", revision=revision) if not f.is_dir]
        try:
            snapshot = Path(api.download_repo(repo_id, "model", revision=revision, local_files_only=True))
        except CacheNotFound:
            snapshot = None

        def cached(path: str, size: int) -> bool:
            return snapshot is not None and (snapshot / path).is_file() and (snapshot / path).stat().st_size == size

        return [RemoteFile(f.path, f.size, cached(f.path, f.size)) for f in remote]

    def download(self, repo_id: str, revision: str | None, names: list[str]) -> Path:
        return Path(self._api().download_repo(repo_id, "model", revision=revision, allow_patterns=names))

    def cached(self, repo_id: str, revision: str | None) -> tuple[Path, list[RemoteFile]]:
        folder = Path(self._api().download_repo(repo_id, "model", revision=revision, local_files_only=True))
        return folder, local_listing(folder)

    def mismatches(self, repo_id: str, revision: str | None) -> list[str]:
        result = self._api().verify_cache(repo_id, "model", revision=revision)
        return [m.path for m in result.mismatches]

    def cached_repos(self) -> list[str]:
        try:
            return sorted(r.repo_id for r in self._api().scan_cache().repos if str(r.repo_type).startswith("model"))
        except Exception:  # a missing or odd cache only means "nothing to list"
            return []

    def explain(self, exc: BaseException, repo_id: str, revision: str | None) -> Exception | None:
        import modelscope_hub as ms

        page = f"https://modelscope.cn/models/{repo_id}"
        if isinstance(exc, ms.CacheNotFound):
            return Unreachable(str(exc))
        if isinstance(exc, ms.PermissionDeniedError):
            return EdgeError(f"{repo_id} on ModelScope needs access: accept its licence at {page} and log in ({self.login})")
        if isinstance(exc, ms.AuthenticationError):
            return EdgeError(f"ModelScope wants a valid login for {repo_id}: {self.login}")
        if isinstance(exc, ms.NotExistError):
            where = f" at revision {revision}" if revision else ""
            return EdgeError(f"no repo {repo_id}{where} on ModelScope (if it is private, log in: {self.login})")
        if isinstance(exc, ms.FileDownloadError):
            failed = ", ".join(sorted(exc.failed_files)) or _line(exc)
            return EdgeError(f"download of {repo_id} interrupted ({failed} failed); {RERUN}")
        if isinstance(exc, ms.NetworkError):
            return Unreachable(str(exc))
        if isinstance(exc, ms.HubError):  # server errors, rate limits: worth another try later
            return EdgeError(f"ModelScope failed for {repo_id} ({_line(exc)}); {RERUN}")
        return None


HUBS = {"hf": HuggingFace(), "modelscope": ModelScope()}


# ------------------------------------------------------------------------------------------ which hub, which id


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
        h.cached(repo_id, None)
    except Exception as exc:
        if isinstance(h.explain(exc, repo_id, None), Unreachable):
            return False
        raise
    return True


# ------------------------------------------------------------------------------------------------------ pulling


def _not_cached(h, repo_id: str, reason: str) -> EdgeError:
    others = [r for r in h.cached_repos() if r != repo_id]
    have = f"cached there: {', '.join(others[:8])}" if others else "nothing else is cached there"
    return EdgeError(f"{reason} and {repo_id} is not in the {h.title} cache ({h.cache_dir()}); {have}")


def _from_cache(h, repo_id: str, revision: str | None, reason: str, levels: Iterable[str]) -> tuple[Path, Selection]:
    try:
        folder, files = h.cached(repo_id, revision)
    except Exception as exc:
        known = h.explain(exc, repo_id, revision)
        if isinstance(known, Unreachable):
            raise _not_cached(h, repo_id, reason) from exc
        if known is not None:
            raise known from exc
        raise
    levels = tuple(levels)
    try:
        selection = select_files(files, levels)
        if selection.kind == "gguf" and not levels and any(f.cached and f.path.endswith(".gguf") for f in selection.files):
            selection = Selection("gguf", tuple(f for f in selection.files if f.cached))  # the levels pulled
        missing = [f.path for f in selection.files if not f.cached]
        if missing:
            raise EdgeError(f"is incomplete (missing {', '.join(missing)}); run again online to resume the download")
        check_complete(folder, selection)
    except EdgeError as exc:  # keep the kind (a bad --level is a usage error)
        raise type(exc)(f"{reason} and the cached copy of {repo_id} {exc}") from exc
    return folder, selection


def fetch(
    ref: str,
    hub: str = "auto",
    revision: str | None = None,
    levels: Iterable[str] = (),
    offline: bool | None = None,
    say: Callable[[str], None] | None = None,
    verify: bool = False,
) -> Pulled:
    """Download (or find in the cache) what edgellm needs from a hub repo; see `pull`.

    `say` hears which hub was chosen and why, before anything is fetched. `verify` hashes the files
    against the hub's SHA-256 sums afterwards (the libraries check sizes while downloading).
    """
    levels = tuple(levels)
    repo_id, named = parse_repo_id(ref)
    name, why = choose_hub(repo_id, hub, named)
    h = HUBS[name]
    offline = offline_mode() if offline is None else offline
    if say:
        say(f"{repo_id}: {h.title} ({why}){', offline' if offline else ''}")

    if offline:
        if verify:
            raise UsageError("verifying needs the hub's checksums: not possible offline")
        folder, selection = _from_cache(h, repo_id, revision, "offline", levels)
        return Pulled(repo_id, name, why, folder, selection.kind, tuple(selection.names), 0, True)

    try:
        try:
            selection = select_files(h.listing(repo_id, revision), levels)
        except EdgeError as exc:
            raise type(exc)(f"{repo_id} on {h.title} {exc}") from exc
        cache = h.cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        ensure_free_space(cache, selection.missing_bytes, f"download of {repo_id}")
        folder = h.download(repo_id, revision, selection.names)
        bad = sorted(set(h.mismatches(repo_id, revision)) & set(selection.names)) if verify else []
    except EdgeError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise NotEnoughSpace(f"disk full while downloading {repo_id}; free space and run again to resume") from exc
        known = h.explain(exc, repo_id, revision)
        if known is None:
            raise
        if isinstance(known, Unreachable):
            # Out of reach: serve the cached copy, as the hubs' own libraries do.
            folder, selection = _from_cache(h, repo_id, revision, f"cannot reach {h.title}", levels)
            return Pulled(repo_id, name, why, folder, selection.kind, tuple(selection.names), 0, True)
        raise known from exc
    if bad:
        how = h.forget.format(repo_id=repo_id)
        raise EdgeError(f"{repo_id}: checksum mismatch in {', '.join(bad)}; remove the repo from the cache ({how}) and pull again")
    try:
        check_complete(folder, selection)
    except EdgeError as exc:
        raise EdgeError(f"{repo_id} on {h.title} {exc}") from exc
    return Pulled(repo_id, name, why, folder, selection.kind, tuple(selection.names), selection.missing_bytes, False)


def pull(repo_id: str, hub: str = "auto", revision: str | None = None, say: Callable[[str], None] | None = None) -> Path:
    """The local folder holding `repo_id`'s safetensors, config and tokenizer files (or its GGUF files).

    Fetches only those files (never `.bin`, `.pth` or `original/`), keeps what an earlier run finished,
    and serves the cache when offline. GGUF repos are registered in the local store as a package.
    """
    pulled = fetch(repo_id, hub=hub, revision=revision, say=say)
    if pulled.kind == "gguf":
        from . import store

        store.register(pulled)
    return pulled.path


def snapshot_name(folder: Path) -> str | None:
    """The repo name of a snapshot folder in a hub cache, whose own name is a commit or a branch
    (`models--meta-llama--Llama-3.2-1B/snapshots/<commit>` -> `Llama-3.2-1B`); None for other folders."""
    folder = Path(folder).absolute()
    repo = folder.parent.parent.name  # HF: models--<owner>--<name>; ModelScope: <owner>--<name>
    if folder.parent.name == "snapshots" and "--" in repo:
        return repo.rsplit("--", 1)[1]
    return None


def resolve_source(src: str, say: Callable[[str], None] | None = None) -> Path:
    """A local folder or file as it is; anything else is a hub repo id, pulled first (see `pull`)."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    try:
        parse_repo_id(src)
    except UsageError:
        raise UsageError(f"no such file or folder, and not a hub repo id: {src}") from None
    return pull(src, say=say)
