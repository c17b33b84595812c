"""The eval plot: accuracy against file size, one point per level with its standard error, a panel per task set."""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_output
from .report import title
from .results import EvalReport

GiB = 1024**3


def plot_accuracy(report: EvalReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    sets = report.task_sets()
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(6 * max(1, len(sets)), 4.5), squeeze=False)
    for ax, task in zip(axes[0], sets):
        rows = [s for s in report.levels_of(task) if s.accuracy is not None]
        xs = [s.size_bytes / GiB for s in rows]
        ys = [100 * s.accuracy for s in rows]
        ax.errorbar(xs, ys, yerr=[100 * (s.stderr or 0.0) for s in rows], fmt="o", capsize=3, zorder=3)
        for s, x, y in zip(rows, xs, ys):
            ax.annotate(s.level, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(title(task), fontsize=9)
        ax.set_xlabel("file size (GiB)")
        ax.set_ylabel("accuracy % (± standard error)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(report.model, fontsize=9)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
