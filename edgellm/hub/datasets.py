"""One file of a dataset repo on Hugging Face or ModelScope (an eval's task file), fetched into the hub's cache.

    hf://OWNER/NAME/PATH            the file at PATH in Hugging Face dataset repo OWNER/NAME (main branch)
    hf://datasets/OWNER/NAME/PATH   the same, as the Hub's own URLs spell it
    hf://OWNER/NAME@REV/PATH        at a branch, tag or commit
    ms://OWNER/NAME[@REV]/PATH      the same on ModelScope (also modelscope://; default branch master)

Offline (HF_HUB_OFFLINE, which holds for both hubs), or when the hub is out of reach, the cached copy serves;
without one, one line says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeError, UsageError
from .clients import HUBS, MS_NO_ACCESS, MS_NO_REVISION, MS_NOT_FOUND, Say, Unreachable, ms_code, quiet_hub
from .download import offline_mode

PREFIXES = {"hf://": "hf", "ms://": "modelscope", "modelscope://": "modelscope"}
_REF = re.compile(r"(?:datasets/)?([\w.-]+)/([\w.-]+)(?:@([^/]+))?/(.+)")
_EXAMPLE = "hf://Rowan/hellaswag/hellaswag_val.txt or ms://OWNER/NAME/PATH"


@dataclass(frozen=True)
class DatasetRef:
    hub: str  # a key of HUBS
    repo_id: str
    revision: str | None
    path: str  # inside the repo, "/"-separated


def is_dataset_ref(value: str) -> bool:
    return value.startswith(tuple(PREFIXES))


def parse(ref: str) -> DatasetRef:
    """hf://OWNER/NAME[@REV]/PATH (or ms://...) -> the hub, repo id, revision and path in the repo."""
    prefix = next((p for p in PREFIXES if ref.startswith(p)), "")
    m = _REF.fullmatch(ref[len(prefix):]) if prefix else None
    # The path and revision name places in the cache: nothing may step out of the repo's folder there.
    names = [*m.group(4).split("/"), m.group(1), m.group(2), m.group(3) or "x"] if m else []
    if not m or "\\" in ref or any(n in ("", ".", "..") for n in names):
        raise UsageError(f"not a dataset file: {ref!r} (expected {prefix or 'hf://'}OWNER/NAME[@REV]/PATH, "
                         f"e.g. {_EXAMPLE})")  # fmt: skip
    return DatasetRef(PREFIXES[prefix], f"{m.group(1)}/{m.group(2)}", m.group(3), m.group(4))


def dataset_file(ref: str, say: Say | None = None) -> Path:
    """The local path of the file `ref` names: downloaded unless cached (or offline)."""
    d = parse(ref)
    h = HUBS[d.hub]
    offline = offline_mode()
    try:
        return _fetch(d, local_only=offline, say=say)
    except Exception as exc:
        if MISSING_FILE[d.hub](exc):
            raise EdgeError(f"{ref}: dataset {d.repo_id} has no file {d.path}") from None
        known = h.explain(exc, d.repo_id, d.revision, dataset=True)
        if not isinstance(known, Unreachable):
            raise (known or exc) from exc
        if not offline:
            try:
                return _fetch(d, local_only=True, say=say)
            except Exception:
                pass
        why = "offline" if offline else f"cannot reach {h.title}"
        raise EdgeError(f"{ref}: {why} and the file is not in the {h.title} cache ({h.cache_dir()})") from None


def _fetch(d: DatasetRef, local_only: bool, say: Say | None) -> Path:
    h = HUBS[d.hub]
    with quiet_hub(h, say):
        return Path(FETCH[d.hub](d, h.cache_dir(), local_only))


def _hf_fetch(d: DatasetRef, cache: Path, local_only: bool) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(d.repo_id, d.path, repo_type="dataset", revision=d.revision, cache_dir=cache,
                           local_files_only=local_only)  # fmt: skip


def _ms_fetch(d: DatasetRef, cache: Path, local_only: bool) -> Path:
    from modelscope_hub import HubApi

    return HubApi().download_file(d.repo_id, "dataset", d.path, revision=d.revision, cache_dir=cache,
                                  local_files_only=local_only)  # fmt: skip


def _hf_missing_file(exc: BaseException) -> bool:
    from huggingface_hub import errors

    return isinstance(exc, errors.RemoteEntryNotFoundError)


def _ms_missing_file(exc: BaseException) -> bool:
    """ModelScope answers 404 for a missing repo, revision or file alike: the body's code tells the repo's and
    the revision's apart, and any other not-found is the file's."""
    from modelscope_hub import NotExistError

    return isinstance(exc, NotExistError) and ms_code(exc) not in (MS_NOT_FOUND, MS_NO_ACCESS, MS_NO_REVISION)


FETCH = {"hf": _hf_fetch, "modelscope": _ms_fetch}
MISSING_FILE = {"hf": _hf_missing_file, "modelscope": _ms_missing_file}
