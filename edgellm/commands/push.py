"""`edgellm push DIR REPO_ID`: upload a package to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import click

from .. import store
from ..errors import EdgeError, UsageError
from ..fsutil import human_bytes

# What a package is on the hub: the quant files, their manifest and the model card.
UPLOADED = ["*.gguf", "manifest.json", "README.md"]
LOGIN = "`hf auth login` or HF_TOKEN"


def package_dir(ref: str) -> Path:
    """A package folder given as a path or a store name."""
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        folder = store.resolve(ref)
        if folder is None:
            raise UsageError(f"no package folder or store entry named {ref}")
    if not any(folder.glob("*.gguf")):
        raise UsageError(f"{folder} holds no .gguf files: nothing to push")
    return folder


@click.command("push")
@click.argument("src", metavar="DIR")
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (when it does not exist yet).")
@click.option("--revision", help="Branch to commit to (default: main).")
@click.option("-m", "--message", default=None, help="Commit message.")
def push(src: str, repo_id: str, private: bool, revision: str | None, message: str | None) -> int:
    """Upload the package DIR (a folder or a store name) to the Hugging Face model repo REPO_ID.

    Uploads the .gguf files, manifest.json and README.md, creating the repo if needed. Uses your
    Hugging Face login (`hf auth login` or HF_TOKEN); uploads are resumable and skip unchanged files.
    """
    import httpx2
    from huggingface_hub import HfApi, constants, errors, get_token

    from ..hub import parse_repo_id

    folder = package_dir(src)
    repo_id, _ = parse_repo_id(repo_id)
    if constants.is_offline_mode():
        raise EdgeError("push needs the network, and HF_HUB_OFFLINE is set")
    if get_token() is None:
        raise EdgeError(f"push needs a Hugging Face login with write access: {LOGIN}")
    size = sum(p.stat().st_size for p in folder.glob("*.gguf"))
    click.echo(f"uploading {folder} ({human_bytes(size)}) to {repo_id}", err=True)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=UPLOADED,
            revision=revision,
            commit_message=message or f"Upload {folder.name} with edgellm",
        )
    except errors.HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            raise EdgeError(f"Hugging Face refused the upload to {repo_id} ({code}): log in with write access ({LOGIN})") from exc
        raise EdgeError(f"upload to {repo_id} failed: {exc}; run again to resume") from exc
    except (OSError, httpx2.TransportError) as exc:
        raise EdgeError(f"upload to {repo_id} interrupted ({exc}); run again to resume") from exc
    click.echo(commit.commit_url)
    return 0
