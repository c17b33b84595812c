"""Images given on the command line: the model's projector checked and every picture decoded before anything loads."""

from __future__ import annotations

from collections.abc import Sequence


def attach(model, mmproj: str | None, files: Sequence[str], prompt: str):
    """(the model with its projector, the decoded pictures, the user message with their places)."""
    from ..engine.images import read_image
    from ..engine.launch import with_projector
    from ..engine.vision import with_images

    pictures = [read_image(f) for f in files]
    ref = with_projector(model, mmproj, bool(pictures))
    return ref, pictures, with_images(prompt, len(pictures))
