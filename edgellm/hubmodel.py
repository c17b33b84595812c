"""Models from a hub on this machine, above the planner: which names are hub ids, and a GGUF repo's level
picked by `hubplan`."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError
from .hubclients import Say


def is_hub_ref(ref: str | None) -> bool:
    """Whether `ref` names a hub repo: not a file or folder here, not a store name, and written as one
    (`owner/name`, `hf:`/`ms:` or a hub URL). A path to a missing .gguf file is a path, not a repo."""
    from . import store
    from .hub import parse_repo_id

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
    from . import store
    from .hub import fetch
    from .hubplan import choose_level

    pulled = fetch(ref, hub=hub, revision=revision, say=say, choose=choose_level)
    if pulled.kind == "gguf":
        store.register(pulled)
    return pulled.path
