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
    found = [p for p in map(_as_path, tokens) if p is not None]
    if not found:
        return text, []
    kept = [t for t in tokens if _as_path(t) is None]
    return " ".join(kept), found
