"""For run, chat and serve: a hub id becomes a model on this machine before anything loads (`edgellm.hub.model`)."""

from __future__ import annotations

import click


def local_model(model: str | None, min_speed: float | None = None, rpc: str | None = None) -> str | None:
    """`model` itself, or for a hub id its store entry, pulled (and for a checkpoint converted and quantized to
    the level the planner picks, decoding at `min_speed`) first, with progress on stderr."""
    from ..errors import UsageError
    from ..hub.model import is_hub_ref, local_model as obtain
    from .package import ProgressReporter

    if rpc and is_hub_ref(model):  # the level would be planned for this machine alone
        raise UsageError("--rpc takes a model on this machine: pull the level to split first (edgellm pull REPO --level L)")
    return obtain(model, say=lambda line: click.echo(line, err=True), progress=ProgressReporter, min_speed=min_speed)
