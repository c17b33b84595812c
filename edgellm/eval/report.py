"""An eval report as people read it: a table per task file (terminal or Markdown), and saved into a manifest."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..fsutil import human_bytes
from .results import EvalReport, LevelScore
from .tasks import KINDS

HEADERS = ("level", "size", "bpw", "acc %", "± se", "vs reference", "verdict", "tasks", "skipped")
PAIRED = ("vs reference", "verdict")  # shown when there is a level to compare with


def columns(report: EvalReport, task) -> tuple[list[str], list[tuple[str, ...]]]:
    """The headers and rows of one task set's table (no comparison columns for a single level)."""
    rows = []
    for s in report.levels_of(task):
        p = report.paired(s)
        vs = "reference" if p is None and s.n else "-"
        if p is not None:
            vs = f"{p.diff * 100:+.2f} ± {p.stderr * 100:.2f} ({p.n} paired)"
        se = "-" if s.stderr is None else f"{s.stderr * 100:.2f}"
        tasks = f"{s.n}" + ("" if s.complete else f" of {s.task.selected} (stopped)")
        rows.append((s.level, human_bytes(s.size_bytes), f"{s.bits_per_weight:.2f}", s.accuracy_text(), se, vs,
                     p.verdict if p else "", tasks, str(len(s.skipped)) if s.skipped else ""))
    keep = [i for i, h in enumerate(HEADERS)
            if (h not in PAIRED or len(rows) > 1) and (h != "skipped" or any(r[i] for r in rows))]
    return [HEADERS[i] for i in keep], [tuple(r[i] for i in keep) for r in rows]


def title(task) -> str:
    return f"{task.title}: {task.file} ({task.selected} of {task.total} tasks)"


def to_markdown(report: EvalReport) -> str:
    lines = [f"### {report.model}", ""]
    for task in report.task_sets():
        headers, rows = columns(report, task)
        lines += [f"**{title(task)}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    chat = any(KINDS[t.kind].chat for t in report.task_sets())
    how = "exams and word problems asked through the model's chat template" if chat else ""
    if not all(KINDS[t.kind].chat for t in report.task_sets()):
        how = "scored as llama-perplexity scores them" + (f"; {how}" if how else "")
    lines += [f"_{how[0].upper()}{how[1:]}; differences are paired on the same tasks against the level "
              "with the most bits (within 2 standard errors: no measurable loss)._", ""]
    return "\n".join(lines)


def print_tables(report: EvalReport) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    for task in report.task_sets():
        table = Table(title=f"{report.model} — {title(task)}", title_justify="left")
        headers, rows = columns(report, task)
        for h in headers:
            table.add_column(h, justify="left" if h in ("level", "verdict") else "right", no_wrap=h != "verdict")
        for r in rows:
            table.add_row(*r)
        console.print(table)
    for s in report.scores:
        for skip in s.skipped:
            console.print(f"[dim]{s.level} {s.task.file}: task {skip.number} skipped: {skip.why}[/]")


def save_into_manifest(report: EvalReport, folder: Path) -> int:
    """Record each complete level's accuracy (by task kind) in the package manifest; returns how many."""
    from ..store.manifest import updating
    from ..store.package import CARD_FILE, write_card

    if not folder.is_dir():
        raise UsageError(f"--save needs a package folder; {folder} is a single file")
    saved = 0
    with updating(folder) as manifest:  # a package, bench or eval run writing at the same time keeps its records
        for s in report.scores:
            entry = manifest.entry(s.level)
            if entry is None or not s.complete or s.accuracy is None:
                continue
            entry.accuracy = {**(entry.accuracy or {}), s.task.record_key: record(report, s)}
            saved += 1
    if (folder / CARD_FILE).is_file():  # the card shows what the manifest holds
        write_card(folder, manifest)
    return saved


def record(report: EvalReport, s: LevelScore) -> dict:
    p = report.paired(s)
    return {"file": s.task.file, "sha256": s.task.sha256, "tasks": s.n, "correct": s.correct,
            "accuracy": round(s.accuracy, 6), "stderr": None if s.stderr is None else round(s.stderr, 6),
            "skipped": len(s.skipped), "paired": p.to_dict() if p else None, "created": report.created}
