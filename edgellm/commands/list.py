"""`edgellm list`: the packages in the local store, their levels and sizes, and which level runs here."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..plan import catalog
from .. import paths
from ..fsutil import human_bytes
from ..store.manifest import accuracy_text


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the store as JSON.")
def list_(as_json: bool) -> int:
    """List the packages in the local store (EDGELLM_HOME moves it).

    FITS is the level this machine would run (the planner's choice), "-" when none fits; levels that do
    not fit are dimmed. FROM is "local" or the hub repo a GGUF package was pulled from. ACCURACY (when any
    package has it) is the task accuracy in % ± standard error that `edgellm eval --save` recorded per level.
    IMAGES (when any package has a vision projector) is its type, size and the tokens one picture costs.

    \b
    --json: {"store", "packages": [{"name", "path", "origin", "source", "size",
             "levels": [{"level", "file", "size", "bits_per_weight", "fit", "parts",
                         "accuracy": {task: {"accuracy", "stderr", "tasks", "file"}} | null}],
             "fits", "fit_note", "error", "projector": {"file", "size", "file_type", "image_tokens",
             "tokens_fixed"} | null}]}  (image_tokens: of one picture; the most, where the size decides)
    (fit: "gpu", "partial", "cpu" or "no"; error: why an entry could not be read, else null; parts: the files
    of a level split in several, "file" the first of them and "size" all of them, else 1)
    """
    found = catalog.entries()
    if as_json:
        click.echo(json.dumps({"store": str(paths.store_dir()), "packages": [e.to_json() for e in found]}, indent=2))
        return 0
    if not found:
        click.echo(f"no packages in {paths.store_dir()} (make one: edgellm package REPO_ID, or edgellm pull a GGUF repo)")
        return 0
    table = Table(title=str(paths.store_dir()), title_justify="left")
    evals = any(f.accuracy for e in found for f in e.files)
    images = any(e.projector for e in found)
    for col in ("NAME", "LEVELS", "SIZE", "FITS", "FROM", *(("IMAGES",) if images else ()), *(("ACCURACY",) if evals else ())):
        table.add_column(col, justify="right" if col == "SIZE" else "left")
    for e in found:
        if e.error:
            table.add_row(e.name, f"[red]unreadable: {e.error}[/red]", "", "", e.origin)
            continue
        accuracy = ("\n".join(f"{f.level}: {accuracy_text(f.accuracy)}" for f in e.files if f.accuracy),) if evals else ()
        levels = ", ".join(f"[dim]{_level(f)}[/dim]" if f.fit == "no" else _level(f) for f in e.files)
        table.add_row(e.name, levels, human_bytes(e.size), e.fits or "-", e.origin, *((_images(e.projector),) if images else ()), *accuracy)
    Console().print(table)
    return 0


def _level(f: catalog.StoredFile) -> str:
    return f"{f.level} {human_bytes(f.size)}" + (f" in {f.parts} files" if f.parts > 1 else "")


def _images(projector: dict | None) -> str:
    """"F16 812 MiB, 256 tok/image"; "-" for a text model."""
    if not projector:
        return "-"
    up_to = "" if projector["tokens_fixed"] else "up to "
    cost = f", {up_to}{projector['image_tokens']} tok/image" if projector["image_tokens"] is not None else ""
    return f"{projector['file_type']} {human_bytes(projector['size'])}{cost}"
