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
