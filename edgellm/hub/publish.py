"""What a package puts on the Hugging Face Hub, and the upload.

Only the package itself goes up: the `.gguf` files at the top of its folder (every part of a split level,
which must all be there; not hidden ones, nothing from sub-folders, the importance matrix only when asked),
`manifest.json` and `README.md`. The manifest that
goes up is a copy without what is private to this machine: the checkpoint's local path, the command lines
that made each file (source, output, calibration and evaluation paths) and the bench results with the
machine they ran on. The card gets the YAML front matter the Hub reads (`base_model`, `license`, `tags`,
`quantized_by`); a card the package lacks is written from its manifest. Both copies are made in a
temporary folder: the package on disk is never changed.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..errors import EdgeError, UsageError
from ..store.manifest import FILENAME as MANIFEST_FILE
from ..store.manifest import Manifest

CARD_FILE = "README.md"
IMATRIX_FILE = "imatrix.gguf"
LOGIN = "`hf auth login` or HF_TOKEN"
# A Hugging Face cache snapshot: .../models--<owner>--<name>/snapshots/<commit>
HF_SNAPSHOT = re.compile(r"/models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # the Hub's licence identifiers: apache-2.0, llama3.2, mit ...


@dataclass(frozen=True)
class Upload:
    """What `push` sends: (name in the repo, local file) pairs, and what it leaves out and why."""

    folder: Path
    files: list[tuple[str, Path]]
    left_out: list[tuple[str, str]]
    manifest: dict | None  # the public manifest, as uploaded
    card: str  # the README.md, as uploaded
    generated: dict[str, str] = field(default_factory=dict)  # name -> content written for the upload

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for name, p in self.files if name not in self.generated) + sum(
            len(text.encode()) for text in self.generated.values()
        )

    def to_dict(self) -> dict:
        return {
            "folder": str(self.folder),
            "files": [
                {"path": name, "bytes": len(self.generated[name].encode()) if name in self.generated else p.stat().st_size,
                 "from": "public copy" if name in self.generated else str(p)}
                for name, p in self.files
            ],
            "left_out": [{"name": n, "why": why} for n, why in self.left_out],
            "manifest": self.manifest,
            "card": self.card,
        }  # fmt: skip


# ------------------------------------------------------------------------------------------------ choosing


def _choose(folder: Path, with_imatrix: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    take, left = [], []
    for p in sorted(folder.iterdir()):
        why = None
        if p.name.startswith("."):
            why = "hidden"
        elif p.is_dir():
            why = "a sub-folder: only the package's top level goes up"
        elif not p.is_file():
            why = "not a regular file"
        elif p.name == IMATRIX_FILE and not with_imatrix:
            why = "the importance matrix (--with-imatrix uploads it)"
        elif not (p.suffix == ".gguf" or p.name in (MANIFEST_FILE, CARD_FILE)):
            why = "not part of a package"
        if why:
            left.append((p.name + ("/" if p.is_dir() else ""), why))
        else:
            take.append(p)
    return take, left


def public_manifest(m: Manifest) -> Manifest:
    """`m` without this machine's paths, command lines and bench results (which name the machine)."""
    source = {"fingerprint": m.source["fingerprint"]} if m.source and m.source.get("fingerprint") else None
    files = [replace(f, command="", bench=None) for f in m.files]
    texts = {k: replace(t, text=Path(t.text).name) if t else None for k, t in (("imatrix", m.imatrix), ("eval", m.eval))}
    return replace(m, source=source, files=files, **texts)


def base_model(m: Manifest | None, gguf_meta: dict) -> str | None:
    """The Hugging Face repo the package was made from: a Hub cache snapshot it was packaged from, or what
    the GGUF header names (convert_hf_to_gguf.py writes `general.base_model.0.repo_url`)."""
    path = (m.source or {}).get("path", "") if m else ""
    if hit := HF_SNAPSHOT.search(str(path)):
        return f"{hit.group(1)}/{hit.group(2)}"
    url = str(gguf_meta.get("general.base_model.0.repo_url", ""))
    if hit := re.fullmatch(r"https://huggingface\.co/([\w.-]+/[\w.-]+)/?", url):
        return hit.group(1)
    return None


def split_card(text: str) -> tuple[dict, str]:
    """(front matter, body) of a model card; a card without YAML front matter has an empty one."""
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", text, re.S)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        raise EdgeError(f"{CARD_FILE} has YAML front matter that does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(meta, dict):
        raise EdgeError(f"{CARD_FILE}'s front matter is not a YAML mapping")
    return meta, text[m.end():]


def card_with_front_matter(text: str, base: str | None, license_: str | None, arch: str | None) -> str:
    """The card with the front matter the Hub reads; what the card already says is kept."""
    meta, body = split_card(text)
    if base:
        meta.setdefault("base_model", base)
        meta.setdefault("base_model_relation", "quantized")
    if license_ and "license" not in meta:
        meta.update({"license": license_} if LICENSE_ID.match(license_) else {"license": "other", "license_name": license_})
    tags = [t for t in meta.get("tags") or [] if isinstance(t, str)]
    meta["tags"] = list(dict.fromkeys(["gguf", *tags, "edgellm", *([arch] if arch else [])]))
    meta.setdefault("quantized_by", "edgellm")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body.lstrip("\n")


def prepare(folder: Path, with_imatrix: bool = False, base: str | None = None, license_: str | None = None) -> Upload:
    """What pushing `folder` would send; reads the package, writes nothing."""
    from ..formats.gguf_info import read_gguf
    from ..formats.gguf_split import is_later_part, orphans, split_name

    take, left = _choose(folder, with_imatrix)
    ggufs = [p for p in take if p.suffix == ".gguf" and p.name != IMATRIX_FILE]
    if not ggufs:
        raise UsageError(f"{folder} holds no .gguf files at its top level: nothing to push")
    if lost := orphans([p.name for p in ggufs]):
        raise EdgeError(f"{lost[0]} is missing from {folder}: its later parts are there; push a split level whole")
    firsts = [p for p in ggufs if not is_later_part(p.name)]
    for p in firsts:
        if split_name(p.name):
            read_gguf(p)  # every part of a split level goes up, so every part must be there
    manifest = Manifest.load(folder) if (folder / MANIFEST_FILE).is_file() else None
    models = [p for p in firsts if not p.name.startswith("mmproj")]  # a vision projector describes no model
    meta = read_gguf((models or firsts)[0]).metadata
    if (folder / CARD_FILE).is_file():
        card = (folder / CARD_FILE).read_text(encoding="utf-8", errors="replace")
    elif manifest is not None:
        card = _written_card(manifest)
    else:
        card = f"# {meta.get('general.name') or folder.name}\n\nGGUF files made with edgellm.\n"
    card = card_with_front_matter(card, base or base_model(manifest, meta), license_ or meta.get("general.license"),
                                  meta.get("general.architecture"))  # fmt: skip
    generated = {CARD_FILE: card}
    public = None
    if manifest is not None:
        public = public_manifest(manifest).to_dict()
        generated[MANIFEST_FILE] = json.dumps(public, indent=2) + "\n"
    files = [(p.name, p) for p in take if p.name not in generated]
    files += [(name, folder / name) for name in generated]
    return Upload(folder, sorted(files), left, public, card, generated)


def _written_card(m: Manifest) -> str:
    from ..store.package import write_card

    with tempfile.TemporaryDirectory() as tmp:
        return write_card(Path(tmp), m).read_text()


# ------------------------------------------------------------------------------------------------- uploading


@contextmanager
def staged(upload: Upload) -> Iterator[list[tuple[str, Path]]]:
    """The upload's files, the generated ones written to a temporary folder (the package stays as it is)."""
    with tempfile.TemporaryDirectory(prefix="edgellm-push-") as tmp:
        files = []
        for name, path in upload.files:
            if name in upload.generated:
                path = Path(tmp) / name
                path.write_text(upload.generated[name], encoding="utf-8")
            files.append((name, path))
        yield files


def push(upload: Upload, repo_id: str, private: bool, revision: str | None, message: str | None,
         say: Callable[[str], None]) -> str:  # fmt: skip
    """Create `repo_id` if needed and commit the upload to it; the commit's URL. Through Xet storage first,
    as huggingface_hub does; where Xet fails, once more through the LFS upload API."""
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi, errors

    from .clients import quiet, retry_without_xet, xet_failure, xet_reason

    api = HfApi()
    with staged(upload) as files, quiet("huggingface_hub", "Hugging Face", say), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")

        def commit():
            ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files]
            return api.create_commit(repo_id, ops, commit_message=message or f"Upload {upload.folder.name} with edgellm",
                                     revision=revision)  # fmt: skip

        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = retry_without_xet(commit, say, repo_id)
        except errors.HfHubHTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code in (401, 403):
                raise EdgeError(f"Hugging Face refused the upload to {repo_id} ({code}): log in with write access ({LOGIN})") from exc
            if isinstance(exc, errors.RevisionNotFoundError):
                raise EdgeError(f"{repo_id} has no branch {revision} to commit to") from exc
            raise EdgeError(f"upload to {repo_id} failed ({exc.server_message or str(exc).splitlines()[0]}); run again to resume") from exc
        except ValueError as exc:
            if "Invalid metadata in README.md" not in str(exc):  # the Hub's validate-yaml refusing the card
                raise EdgeError(f"upload to {repo_id} failed ({str(exc).splitlines()[0]}); run again to resume") from exc
            raise EdgeError(f"Hugging Face refused {CARD_FILE}: {' '.join(str(exc).split())}") from exc
        except (OSError, httpx2.TransportError) as exc:
            raise EdgeError(f"upload to {repo_id} interrupted ({exc}); run again to resume") from exc
        except RuntimeError as exc:
            if xet_failure(exc):
                raise EdgeError(f"upload to {repo_id} failed in Xet storage ({xet_reason(exc)}); run again to resume") from exc
            raise
    for w in seen:  # the Hub's remarks on the card's metadata (validate-yaml's warnings)
        if "metadata" in str(w.message):
            say(f"Hugging Face: {' '.join(str(w.message).split())}")
    return info.commit_url
