"""Images attached to a chat message: image files named in what the user typed, pasted or dropped (a terminal
pastes a dropped file as its path, quoted or with its spaces escaped, or as a file:// URI), or with `/image PATH`."""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import unquote, urlsplit

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
COMMAND = "/image"


def _as_path(token: str) -> Path | None:
    if token.startswith("file://"):
        token = unquote(urlsplit(token).path)
    if not token.lower().endswith(SUFFIXES):
        return None
    path = Path(token).expanduser()
    return path if path.is_file() else None


def split_images(text: str) -> tuple[str, list[Path]]:
    """The message text without the image files it names, and those files in order. `/image PATH` names one
    whatever its suffix (the decoder says whether it is an image)."""
    stripped = text.strip()
    if stripped.startswith(COMMAND + " "):
        rest = stripped[len(COMMAND) + 1 :].strip()
        try:
            parts = shlex.split(rest)
        except ValueError:
            parts = [rest]
        name = parts[0] if len(parts) == 1 else rest
        return "", [Path(unquote(urlsplit(name).path) if name.startswith("file://") else name).expanduser()]
    try:
        tokens = shlex.split(text)
    except ValueError:  # an apostrophe in plain text: no quoting to undo
        tokens = text.split()
    named = [t for t in tokens if _as_path(t) is not None]
    if not named:
        return text, []
    for t in named:  # the rest of the text stays as typed, its own quotes too
        text = _without(text, t)
    return " ".join(text.split()), [_as_path(t) for t in named]


def _without(text: str, token: str) -> str:
    """`text` without the first way a terminal may have written `token` in it."""
    for form in (shlex.quote(token), f'"{token}"', token.replace(" ", "\\ "), token):
        if form in text:
            return text.replace(form, " ", 1)
    return text
