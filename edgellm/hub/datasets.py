"""One file of a Hugging Face dataset repo (an eval's task file), fetched into the hub's cache.

    hf://OWNER/NAME/PATH            the file at PATH in dataset repo OWNER/NAME (main branch)
    hf://datasets/OWNER/NAME/PATH   the same, as the Hub's own URLs spell it
    hf://OWNER/NAME@REV/PATH        at a branch, tag or commit

Offline (HF_HUB_OFFLINE), or when the Hub is out of reach, the cached copy serves; without one, one line says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import EdgeError, UsageError
from .clients import HuggingFace, Say, Unreachable, quiet_hub
from .download import offline_mode

PREFIX = "hf://"
_REF = re.compile(r"(?:datasets/)?([\w.-]+/[\w.-]+)(?:@([^/]+))?/(.+)")


def is_dataset_ref(value: str) -> bool:
    return value.startswith(PREFIX)


def parse(ref: str) -> tuple[str, str | None, str]:
    """hf://OWNER/NAME[@REV]/PATH -> (repo id, revision, path in the repo)."""
    m = _REF.fullmatch(ref[len(PREFIX):])
    if not m or ".." in m.group(3).split("/"):
        raise UsageError(f"not a dataset file: {ref!r} (expected hf://OWNER/NAME/PATH, e.g. "
                         "hf://Rowan/hellaswag/hellaswag_val.txt)")
    return m.group(1), m.group(2), m.group(3)


def dataset_file(ref: str, say: Say | None = None) -> Path:
    """The local path of the file `ref` names: downloaded unless cached (or offline)."""
    repo_id, revision, path = parse(ref)
    h = HuggingFace()
    offline = offline_mode()
    try:
        return _fetch(h, repo_id, revision, path, local_only=offline, say=say)
    except Exception as exc:
        if _missing_file(exc):
            raise EdgeError(f"{ref}: dataset {repo_id} has no file {path}") from None
        known = h.explain(exc, repo_id, revision)
        if not isinstance(known, Unreachable):
            raise (known or exc) from exc
        if not offline:
            try:
                return _fetch(h, repo_id, revision, path, local_only=True, say=say)
            except Exception:
                pass
        why = "offline" if offline else f"cannot reach {h.title}"
        raise EdgeError(f"{ref}: {why} and the file is not in the {h.title} cache ({h.cache_dir()})") from None


def _fetch(h: HuggingFace, repo_id: str, revision: str | None, path: str, local_only: bool, say: Say | None) -> Path:
    from huggingface_hub import hf_hub_download

    with quiet_hub(h, say):
        return Path(hf_hub_download(repo_id, path, repo_type="dataset", revision=revision, cache_dir=h.cache_dir(),
                                    local_files_only=local_only))


def _missing_file(exc: BaseException) -> bool:
    from huggingface_hub import errors

    return isinstance(exc, errors.RemoteEntryNotFoundError)
