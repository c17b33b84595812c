"""`edgellm pull REPO_ID`: fetch a model from Hugging Face or ModelScope into the hub's own cache."""

from __future__ import annotations

import json

import click

from ..hub import download as hub
from ..store import store
from ..errors import Interrupted, UsageError
from ..fsutil import human_bytes


@click.command("pull")
@click.argument("repo_id")
@click.option(
    "--hub",
    "hub_name",
    type=click.Choice(["auto", *hub.HUB_NAMES]),
    default="auto",
    show_default=True,
    help="Where to fetch from. auto: a prefix (hf:, ms:) or hub URL in the id, owners that publish on "
    "ModelScope (LLM-Research, ...), EDGELLM_HUB, the cache that already holds the repo, else Hugging Face.",
)
@click.option("--revision", help="Branch, tag or commit (default: the repo's main branch).")
@click.option(
    "--level",
    "levels",
    multiple=True,
    metavar="LEVEL",
    help="For a repo of GGUF files: fetch this level (e.g. Q4_K_M); repeatable. Default: the level the "
    "planner picks for this machine, judged from the levels' headers before downloading.",
)
@click.option("--all", "every_level", is_flag=True, help="For a repo of GGUF files: fetch every level.")
@click.option("--offline", is_flag=True, help="Use only the cache (as HF_HUB_OFFLINE=1 does).")
@click.option("--verify", is_flag=True, help="Check the files' SHA-256 against the hub's after downloading.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pull(
    repo_id: str, hub_name: str, revision: str | None, levels: tuple[str, ...], every_level: bool, offline: bool,
    verify: bool, as_json: bool,
) -> int:
    """Download what edgellm needs from REPO_ID and print the local folder.

    A checkpoint repo gives its safetensors, config and tokenizer files (never .bin, .pth or original/),
    ready for `edgellm package`. From a repo of GGUF files comes one level: the highest-quality quantized one
    the planner fits on this machine (RAM, and VRAM), judged from the levels' GGUF headers read by byte
    ranges before anything is downloaded (`edgellm plan REPO_ID` shows the plan), or those named with
    --level, or all with --all; it is registered in the local store under the repo's name (without -GGUF),
    ready for `edgellm chat NAME`, beside levels pulled before. Files go to the hub's own cache (HF_HUB_CACHE,
    MODELSCOPE_CACHE) with its token and resume; the free disk space is checked first.
    """
    from ..hub.remote_plan import choose_level

    if levels and every_level:
        raise UsageError("--level and --all exclude each other")
    try:
        pulled = hub.fetch(
            repo_id, hub=hub_name, revision=revision, levels=levels, offline=offline or None,
            say=lambda line: click.echo(line, err=True) if not as_json else None,
            verify=verify, every_level=every_level, choose=choose_level,
        )
    except KeyboardInterrupt:
        raise Interrupted("download interrupted; run the same command again to resume") from None
    entry = store.register(pulled) if pulled.kind == "gguf" else None  # the entry's folder

    if as_json:
        click.echo(
            json.dumps(
                {
                    "repo_id": pulled.repo_id,
                    "hub": pulled.hub,
                    "hub_reason": pulled.why,
                    "path": str(pulled.path),
                    "kind": pulled.kind,
                    "files": list(pulled.files),
                    "downloaded_bytes": pulled.downloaded,
                    "offline": pulled.offline,
                    "level_chosen": pulled.choice.level if pulled.choice else None,
                    "level_reason": pulled.choice.why if pulled.choice else None,
                    "store_name": entry.name if entry else None,
                    "store_path": str(entry) if entry else None,
                },
                indent=2,
            )
        )
        return 0
    how = "from the cache" if pulled.offline else f"{human_bytes(pulled.downloaded)} downloaded"
    click.echo(f"{len(pulled.files)} files, {how}", err=True)
    if entry:
        click.echo(f"registered as {entry.name}: edgellm chat {entry.name}", err=True)
    else:
        click.echo(f"next: edgellm package {pulled.repo_id}", err=True)
    click.echo(str(pulled.path))
    return 0
