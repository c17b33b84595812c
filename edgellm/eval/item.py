"""One item of a task file, and the error a malformed file raises (every reader of task files shares them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError


@dataclass(frozen=True)
class Task:
    """One item. Its choices are scored as prompt + separator + choice + after."""

    number: int  # 1-based position in the file (the line for WinoGrande)
    prompt: str
    choices: tuple[str, ...]
    gold: frozenset[int]  # indexes of the right choices
    after: str = ""  # WinoGrande: the sentence after the blank
    answer: str = ""  # GSM8K: the gold number as the file writes it


class TaskFileError(UsageError):
    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path}: {what}")


def decode_text(path: Path, data: bytes, encoding: str = "utf-8") -> str:
    """A task file's bytes as text; bytes that are not UTF-8 are one error naming the line."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskFileError(path, f"line {line}: not UTF-8 text") from None
