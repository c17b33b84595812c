"""For run, chat and serve: a hub id becomes a model on this machine before anything loads (`hubmodel`)."""

from __future__ import annotations

import click


def local_model(model: str | None) -> str | None:
    """`model` itself, or for a hub id its store entry, pulled (and for a checkpoint converted and quantized to
    the level the planner picks) first, with progress on stderr."""
    from ..hubmodel import local_model as obtain
    from .package import ProgressReporter

    return obtain(model, say=lambda line: click.echo(line, err=True), progress=ProgressReporter)
