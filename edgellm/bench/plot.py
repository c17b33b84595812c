"""The bench plot: generation speed and KL divergence against file size, one point per level."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .run import BenchReport, pareto
from ..fsutil import atomic_output

GiB = 1024**3


@dataclass(frozen=True)
class Panel:
    label: str
    higher_is_better: bool
    levels: list[str]
    points: list[tuple[float, float]]  # (file size in GiB, value), one per level

    @property
    def front(self) -> list[int]:
        return pareto(self.points, self.higher_is_better)


def panels(report: BenchReport) -> list[Panel]:
    """What the plot shows: generation speed, and KL divergence (or perplexity without a base)."""
    ok = [r for r in report.results if r.ok]
    metrics = [("generation tokens/s", lambda r: r.tg.mean if r.tg else None, True)]
    if any(r.kld is not None for r in ok):
        metrics.append(("KL divergence vs base", lambda r: r.kld, False))
    elif any(r.ppl is not None for r in ok):
        metrics.append(("perplexity", lambda r: r.ppl, False))
    out = []
    for label, value, higher in metrics:
        rows = [(r, value(r)) for r in ok if value(r) is not None]
        out.append(Panel(label, higher, [r.label for r, _ in rows], [(r.size_bytes / GiB, v) for r, v in rows]))
    return out


def plot(report: BenchReport, out: Path) -> Path:
    """Write a PNG with one panel per metric; the Pareto front (nothing smaller is as good) is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    shown = panels(report)
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], shown):
        points = panel.points
        ax.scatter([p[0] for p in points], [p[1] for p in points], zorder=3)
        for level, (x, y) in zip(panel.levels, points):
            ax.annotate(level, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = panel.front
        if front:
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:red",
                    label="Pareto front", zorder=2)
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("file size (GiB)")
        ax.set_ylabel(panel.label)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{report.model}: {report.machine.get('summary', '')}", fontsize=9)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
