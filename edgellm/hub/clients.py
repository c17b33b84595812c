"""The two hubs as edgellm talks to them: huggingface_hub and modelscope_hub, and what their failures mean.

The network work is the hubs' own libraries: they keep finished files across runs and resume cut
transfers, verify checksums, read the user's token and keep their usual cache layout, so a model fetched
here is shared with transformers, llama.cpp's tools and the hubs' CLIs. This module lists a repo, fetches
named files, reads the cache, and turns the libraries' failures into one line the user can act on.

Paths the live hubs take that a plain HTTP mirror would not:
- Hugging Face keeps weights on Xet storage: `resolve/` answers carry `X-Xet-Hash`, and hf_xet fetches the
  chunks from a CAS server of its own. Where that server cannot be reached (a proxy or firewall that lets
  huggingface.co through but not the Xet hosts), the download is tried once more over plain HTTPS, which
  the Hub still serves for every file.
- ModelScope answers 404 for a missing, a private and a gated repo alike; only the body's `Code` tells them
  apart, and a revision the repo lacks has a code of its own.
- Both libraries log every retry (modelscope_hub with timestamps). While edgellm works their log records
  are taken: a retry becomes one status line, and what fails in the end is edgellm's one error line.
- A byte range of a file (to read a GGUF or safetensors header before downloading) is a GET with `Range`
  on the file's download URL, through the library's own session, login and typed errors: Hugging Face's
  `resolve/` redirects LFS and Xet files to its CDN, ModelScope's file endpoint redirects LFS files to OSS,
  and both storage hosts answer 206. `open_range` hands the answer over unjudged; `ranges` checks it.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeError

Say = Callable[[str], None]
RERUN = "run the same command again to resume (finished files are kept)"


@dataclass(frozen=True)
class RangeAnswer:
    """A hub's answer to a byte-range request, as received: judged by `ranges`."""

    status: int
    content_range: str | None
    content_encoding: str | None
    chunks: Iterator[bytes]


RANGE_CHUNK = 1 << 20
RANGE_RETRIES = 2  # a plan reads a few headers: a hub that fails twice is reported, not waited for


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repo, "/"-separated
    size: int  # bytes
    cached: bool  # already complete in the hub's cache
    sha256: str | None = None  # the hub's checksum where it gives one (HF: LFS files; ModelScope: every file)


class Unreachable(Exception):
    """The hub could not be reached: the cache may still serve."""


class RepoNotFound(EdgeError):
    """The hub has no such repo (or it is private and the login may not see it)."""


def _line(exc: BaseException) -> str:
    """The first line of a library's message (some span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def local_listing(folder: Path) -> list[RemoteFile]:
    """The files of a snapshot folder on disk, as a listing (links followed: HF snapshots link into blobs)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel.startswith(".cache/") or not p.is_file():
            continue
        out.append(RemoteFile(rel, p.stat().st_size, True))
    return out


# ------------------------------------------------------------------------------------------- quiet libraries

# What failed, from a library's retry message: "HTTP Error 503 thrown while requesting GET ...",
# "Repo x: Root=/ page=1 listing failed (NetworkError), retry in 1s (1/4)".
_REASON = re.compile(r"HTTP Error \d+|\b[A-Z]\w*(?:Error|Timeout)\b")


class _RetryLine(logging.Handler):
    """Takes a library's log records: the first retry becomes one status line, the rest is dropped."""

    def __init__(self, title: str, say: Say | None) -> None:
        super().__init__(logging.DEBUG)
        self.title, self.say = title, say
        self.said = False
        self.guard = threading.Lock()  # downloads log from worker threads

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno < logging.WARNING or "retr" not in text.lower() or self.say is None:
            return
        with self.guard:
            if self.said:
                return
            self.said = True
        m = _REASON.search(text)
        self.say(f"{self.title}: {m.group(0) if m else 'a request failed'}; retrying…")


@contextmanager
def quiet(logger_name: str, title: str, say: Say | None) -> Iterator[None]:
    """While the block runs, the library's logger speaks only through `say`, once, when it retries."""
    logger = logging.getLogger(logger_name)
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers, logger.propagate = [_RetryLine(title, say)], False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


# --------------------------------------------------------------------------------------------- Hugging Face

# huggingface_hub's functions that call into hf_xet: what hf_xet raises comes out of them.
XET_CODE = frozenset({"xet_get", "_upload_xet_files", "_process_batch", "_coordinator_loop"})


def xet_failure(exc: BaseException) -> bool:
    """Whether `exc` is hf_xet failing: its CAS server out of reach (RuntimeError on downloads,
    ConnectionError on uploads), a refused token, a broken transfer. Not a local disk error."""
    import hf_xet

    if isinstance(exc, (hf_xet.XetAuthenticationError, hf_xet.XetObjectNotFoundError)):
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    raised_by_xet = bool(frames) and frames[-1].name in XET_CODE
    return raised_by_xet and (isinstance(exc, RuntimeError) or (isinstance(exc, OSError) and exc.errno is None))


def xet_reason(exc: BaseException) -> str:
    """`Task error: File reconstruction error: CAS Client Error: ...` -> `CAS Client Error: ...`, shortened."""
    text = re.sub(r"^(?:Task error: |File reconstruction error: )+", "", _line(exc))
    text = re.sub(r"\(?(https?://[^/\s)]+)[^\s)]*\)?", r"\1", text)  # the host tells which one is blocked
    return text if len(text) <= 160 else text[:157] + "..."


@contextmanager
def without_xet() -> Iterator[None]:
    """huggingface_hub as with HF_HUB_DISABLE_XET=1: downloads through `resolve/` and the CDN, uploads
    through the LFS batch API."""
    from huggingface_hub import constants

    before = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = before


def retry_without_xet(action: Callable[[], object], say: Say | None, what: str):
    """Run `action`; if Xet storage fails, say so in one line and run it again over plain HTTPS."""
    from huggingface_hub import constants

    try:
        return action()
    except Exception as exc:
        if constants.HF_HUB_DISABLE_XET or not xet_failure(exc):
            raise
        if say:
            say(f"Hugging Face: Xet storage failed for {what} ({xet_reason(exc)}); retrying over plain HTTPS…")
    with without_xet():
        return action()


class HuggingFace:
    name = "hf"
    title = "Hugging Face"
    login = "`hf auth login` or HF_TOKEN"
    forget = "hf cache rm model/{repo_id}"
    logger = "huggingface_hub"

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
                s.lfs.sha256 if s.lfs else None,
            )
            for s in info.siblings or []
        ]

    def download(self, repo_id: str, revision: str | None, names: list[str], say: Say | None) -> Path:
        from huggingface_hub import snapshot_download

        def fetch() -> str:
            return snapshot_download(repo_id, revision=revision, allow_patterns=names, cache_dir=self.cache_dir())

        return Path(retry_without_xet(fetch, say, repo_id))

    @contextmanager
    def open_range(self, repo_id: str, revision: str | None, path: str, first: int, last: int) -> Iterator[RangeAnswer]:
        """GET bytes first..last of `path` through `resolve/` (redirects followed, the login not sent on to the
        CDN), with huggingface_hub's session, token, timeout and typed errors."""
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

        headers = build_hf_headers() | {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        url = hf_hub_url(repo_id, path, revision=revision)
        with http_stream_backoff("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                                 max_retries=RANGE_RETRIES) as r:  # fmt: skip
            hf_raise_for_status(r)
            yield RangeAnswer(r.status_code, r.headers.get("Content-Range"), r.headers.get("Content-Encoding"),
                              r.iter_bytes(RANGE_CHUNK))  # fmt: skip

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
        return folder, [
            RemoteFile(f.path, f.size, (folder / f.path).is_file(), f.lfs.sha256 if f.lfs else None) for f in tree
        ]

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

    def explain(self, exc: BaseException, repo_id: str, revision: str | None,
                dataset: bool = False) -> Exception | None:  # fmt: skip
        """The user's line for a huggingface_hub failure; Unreachable when the cache may serve."""
        import httpx2
        from huggingface_hub import errors

        if isinstance(exc, errors.GatedRepoError):
            page = f"https://huggingface.co/{'datasets/' if dataset else ''}{repo_id}"
            return EdgeError(
                f"{repo_id} is gated on Hugging Face: accept its licence at {page} "
                f"and log in ({self.login})"
            )
        if isinstance(exc, errors.RepositoryNotFoundError):
            return RepoNotFound(f"no repo {repo_id} on Hugging Face (if it is private, log in: {self.login})")
        if isinstance(exc, errors.RevisionNotFoundError):
            return EdgeError(f"{repo_id} on Hugging Face has no revision {revision} (a branch, tag, commit or refs/pr/N)")
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
        if xet_failure(exc):  # Xet failed, and so did plain HTTPS after it, or Xet was all there was
            return EdgeError(f"download of {repo_id} failed in Xet storage ({xet_reason(exc)}); {RERUN}")
        return None


# ---------------------------------------------------------------------------------------------- ModelScope

# The body's `Code` of ModelScope's 404s (the HTTP status is the same for all three).
MS_NOT_FOUND = 10010205001  # no such repo, or a private one this login may not see
MS_NO_ACCESS = 10010200001  # a gated repo: its licence is not accepted yet
MS_NO_REVISION = 10990101004
MS_DEFAULT_REVISION = "master"


def ms_code(exc: BaseException) -> int | None:
    body = getattr(exc, "response_body", None)
    if not isinstance(body, dict):
        return None
    try:
        return int(body.get("Code", body.get("code")))
    except (TypeError, ValueError):
        return None


class ModelScope:
    name = "modelscope"
    title = "ModelScope"
    login = "`ms login` or MODELSCOPE_API_TOKEN"
    forget = "ms cache clear --repo-type model --repo-id {repo_id}"
    logger = "modelscope_hub"

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

        return [RemoteFile(f.path, f.size, cached(f.path, f.size), f.sha256) for f in remote]

    def download(self, repo_id: str, revision: str | None, names: list[str], say: Say | None) -> Path:
        return Path(self._api().download_repo(repo_id, "model", revision=revision, allow_patterns=names))

    @contextmanager
    def open_range(self, repo_id: str, revision: str | None, path: str, first: int, last: int) -> Iterator[RangeAnswer]:
        """GET bytes first..last of `path` through the file endpoint (LFS files redirect to OSS), with
        modelscope_hub's session, login, timeouts and typed errors."""
        headers = {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        r = self._api().legacy.download_stream(repo_id, "model", path, revision or MS_DEFAULT_REVISION, headers=headers)
        try:
            yield RangeAnswer(r.status_code, r.headers.get("Content-Range"), r.headers.get("Content-Encoding"),
                              r.iter_content(RANGE_CHUNK))  # fmt: skip
        finally:
            r.close()

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

    def explain(self, exc: BaseException, repo_id: str, revision: str | None,
                dataset: bool = False) -> Exception | None:  # fmt: skip
        import modelscope_hub as ms

        page = f"https://modelscope.cn/{'datasets' if dataset else 'models'}/{repo_id}"
        if isinstance(exc, ms.CacheNotFound):
            return Unreachable(str(exc))
        if isinstance(exc, ms.FileDownloadError):
            # Every file was tried; a refusal explains them all (a gated repo fails file by file).
            for failed in exc.failed_files.values():
                if ms_code(failed) is not None or isinstance(failed, (ms.AuthenticationError, ms.PermissionDeniedError)):
                    return self.explain(failed, repo_id, revision, dataset)
            failed = ", ".join(sorted(exc.failed_files)) or _line(exc)
            return EdgeError(f"download of {repo_id} interrupted ({failed} failed); {RERUN}")
        code = ms_code(exc)
        if code == MS_NO_ACCESS or isinstance(exc, ms.PermissionDeniedError):
            return EdgeError(f"{repo_id} on ModelScope needs access: accept its licence at {page} and log in ({self.login})")
        if code == MS_NO_REVISION:
            return EdgeError(f"{repo_id} on ModelScope has no revision {revision} (a branch, tag or commit)")
        if isinstance(exc, ms.AuthenticationError):
            return EdgeError(f"ModelScope refused the login for {repo_id}: log in again ({self.login})")
        if code == MS_NOT_FOUND or isinstance(exc, ms.NotExistError):
            return RepoNotFound(f"no repo {repo_id} on ModelScope (if it is private, log in: {self.login})")
        if isinstance(exc, ms.NetworkError):
            return Unreachable(str(exc))
        if isinstance(exc, ms.HubError):  # server errors, rate limits: worth another try later
            return EdgeError(f"ModelScope failed for {repo_id} ({_line(exc)}); {RERUN}")
        return None


HUBS = {"hf": HuggingFace(), "modelscope": ModelScope()}


@contextmanager
def quiet_hub(h, say: Say | None) -> Iterator[None]:
    """`h`'s library logs through `say` only, once, when it retries (modelscope_hub first sets its own
    handler up, so it is set up before being replaced)."""
    if h.name == "modelscope":
        from modelscope_hub.utils.logger import get_logger

        get_logger()
    with quiet(h.logger, h.title, say):
        yield
