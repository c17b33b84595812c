"""`edgellm rm NAME`: delete a package from the local store."""

from __future__ import annotations

import click

from ..hub import download as hub
from ..store import store
from ..fsutil import human_bytes


@click.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def rm(names: tuple[str, ...]) -> int:
    """Remove packages from the local store (see `edgellm list`).

    For a GGUF repo pulled from a hub only the store entry goes: its files stay in the hub's cache,
    shared with other tools (remove them with `hf cache rm` or `ms cache clear`). For models added with
    `edgellm import`, and a folder linked into the store, only the links go.
    """
    for name in names:
        gone = store.remove(name)
        if gone.link_to is not None:
            click.echo(f"removed {gone.name}, a link to {gone.link_to}: that folder and its files were left as they are")
        elif gone.source and "imported" in gone.source:
            click.echo(f"removed {gone.name}; its {human_bytes(gone.size)} stay where they were imported from "
                       f"({gone.source['imported']})")
        elif gone.source and "built" in gone.source:  # made here from a hub's checkpoint, which stays cached
            h = hub.HUBS[gone.source["hub"]]
            how = h.forget.format(repo_id=gone.source["repo_id"])
            click.echo(f"removed {gone.name} ({human_bytes(gone.size)} freed); the checkpoint it was made from stays "
                       f"in the {h.title} cache ({how})")
        elif gone.source:
            h = hub.HUBS[gone.source["hub"]]
            how = h.forget.format(repo_id=gone.source["repo_id"])
            click.echo(f"removed {gone.name}; its {human_bytes(gone.size)} stay in the {h.title} cache ({how})")
        else:
            click.echo(f"removed {gone.name} ({human_bytes(gone.size)} freed)")
    return 0
