"""`edgellm push DIR REPO_ID`: upload a package to the Hugging Face Hub (see `edgellm.hub.publish`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..store import store
from ..errors import EdgeError, UsageError
from ..fsutil import human_bytes


def package_dir(ref: str) -> Path:
    """A package folder given as a path or a store name."""
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        folder = store.resolve(ref)
        if folder is None:
            raise UsageError(f"no package folder or store entry named {ref}")
    return folder


def _show(upload, repo_id: str) -> None:
    click.echo(f"would upload to {repo_id} ({human_bytes(upload.size)}):")
    for f in upload.to_dict()["files"]:
        what = f"{human_bytes(f['bytes'])}, {f['from']}" if f["from"] == "public copy" else human_bytes(f["bytes"])
        click.echo(f"  {f['path']}  ({what})")
    if upload.left_out:
        click.echo("left out:")
        for name, why in upload.left_out:
            click.echo(f"  {name}  ({why})")
    if upload.manifest is not None:
        click.echo("manifest.json will say:")
        click.echo(json.dumps(upload.manifest, indent=2))
    click.echo("README.md will say:")
    click.echo(upload.card)


@click.command("push")
@click.argument("src", metavar="DIR")
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (when it does not exist yet).")
@click.option("--revision", help="Branch to commit to (default: main).")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("--with-imatrix", is_flag=True, help="Upload the package's imatrix.gguf too.")
@click.option("--base-model", default=None, metavar="REPO", help="The card's base_model (default: the Hugging Face "
              "repo the package was made from, when known).")  # fmt: skip
@click.option("--license", "license_", default=None, metavar="ID", help="The card's license (default: the GGUF's).")
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded, and what the manifest and card say.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print it as JSON.")
def push(src: str, repo_id: str, private: bool, revision: str | None, message: str | None, with_imatrix: bool,
         base_model: str | None, license_: str | None, dry_run: bool, as_json: bool) -> int:  # fmt: skip
    """Upload the package DIR (a folder or a store name) to the Hugging Face model repo REPO_ID.

    Uploads the .gguf files at the top of DIR (not hidden ones, not sub-folders; imatrix.gguf only with
    --with-imatrix), a copy of manifest.json without local paths, command lines or bench machines, and
    README.md with the Hub's YAML front matter (base_model, license, tags, quantized_by); the package on
    disk is not changed. Creates the repo if needed and uses your Hugging Face login (`hf auth login` or
    HF_TOKEN); an interrupted upload resumes when run again.
    """
    from huggingface_hub import constants, get_token

    from ..hub import publish
    from ..hub.download import parse_repo_id

    if as_json and not dry_run:
        raise UsageError("--json goes with --dry-run")
    folder = package_dir(src)
    repo_id, _ = parse_repo_id(repo_id)
    upload = publish.prepare(folder, with_imatrix, base_model, license_)
    if dry_run:
        if as_json:
            click.echo(json.dumps({"repo_id": repo_id, **upload.to_dict()}, indent=2))
        else:
            _show(upload, repo_id)
        return 0
    if constants.is_offline_mode():
        raise EdgeError("push needs the network, and HF_HUB_OFFLINE is set")
    if get_token() is None:
        raise EdgeError(f"push needs a Hugging Face login with write access: {publish.LOGIN}")
    click.echo(f"uploading {len(upload.files)} files from {folder} ({human_bytes(upload.size)}) to {repo_id}", err=True)
    url = publish.push(upload, repo_id, private, revision, message, say=lambda line: click.echo(line, err=True))
    click.echo(url)
    return 0
