"""`edgellm import PATH`: GGUF models that live elsewhere on this machine, in the store without a copy."""

from __future__ import annotations

from pathlib import Path

import click

from ..fsutil import human_bytes


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Store name for the model (when PATH holds one; default: from its folder, "
              "Ollama manifest or GGUF header).")  # fmt: skip
@click.option("--mmproj", type=click.Path(path_type=Path), default=None,
              help="The vision projector GGUF that goes with the model (a folder's mmproj-*.gguf is found by itself).")
def import_(path: Path, name: str | None, mmproj: Path | None) -> int:
    """Register the GGUF models under PATH in the local store, linked where they are (nothing is copied).

    PATH is a .gguf file, an Ollama blob, or a folder: the Hugging Face cache, LM Studio's models folder,
    Ollama's models folder (its manifests name the blobs), any folder of .gguf files. Files are found by
    their GGUF magic, one model per folder; each header is read and checked and each file's sha256 is
    recorded in the entry's source.json. `edgellm rm NAME` removes only the links.
    """
    from ..store.importing import import_models
    from ..store.models import resolve_model

    for entry in import_models(path, name, say=lambda line: click.echo(line, err=True), mmproj=mmproj):
        ref = resolve_model(entry)
        size = sum(f.size for f in ref.files)
        levels = ", ".join(f.level for f in ref.files)
        images = f", projector {ref.projector.name}" if ref.projector else ""
        click.echo(f"imported {entry.name}: {levels} ({human_bytes(size)}){images}, linked from {path}; edgellm chat {entry.name}")
    return 0
