"""Progress bars on stderr (stdout stays for results), one look for every long command."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# what is counted -> the columns after the label and the bar
COLUMNS: dict[str, tuple[type[ProgressColumn] | str, ...]] = {
    "bytes": (DownloadColumn, TransferSpeedColumn, TimeRemainingColumn),  # files written
    "items": (MofNCompleteColumn, "{task.fields[what]}", TimeRemainingColumn),  # tensors, chunks
    "steps": (MofNCompleteColumn, TimeElapsedColumn),  # steps of unknown length
}


def progress_bar(counts: str, label_width: int = 0) -> Progress:
    """A rich Progress on stderr for `counts` ("bytes", "items" or "steps"); labels padded to `label_width`."""
    label = TextColumn(f"[bold]{{task.description:<{label_width}}}" if label_width else "[bold]{task.description}")
    columns = [TextColumn(c) if isinstance(c, str) else c() for c in COLUMNS[counts]]
    return Progress(label, BarColumn(), *columns, console=Console(stderr=True), transient=False)
