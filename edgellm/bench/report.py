"""A bench report as people read it: table columns, CSV, Markdown, merged runs, saved into a manifest."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .run import BenchReport
from ..errors import EdgeError, UsageError
from ..fsutil import human_bytes
from ..store.manifest import updating
from ..plan.planner import gpu_layers_text

COLUMNS = [  # (header, value of a FileResult as text)
    ("level", lambda r: r.label),
    ("size", lambda r: human_bytes(r.size_bytes)),
    ("bpw", lambda r: f"{r.bits_per_weight:.2f}"),
    ("pp t/s", lambda r: str(r.pp) if r.pp else "-"),
    ("tg t/s", lambda r: str(r.tg) if r.tg else "-"),
    ("TTFT ms", lambda r: f"{r.ttft_s * 1000:.0f}" if r.ttft_s is not None else "-"),
    ("load s", lambda r: f"{r.load_s:.2f}" if r.load_s is not None else "-"),
    ("peak RAM", lambda r: human_bytes(r.peak_rss_bytes) if r.peak_rss_bytes else "-"),
    ("GPU layers", lambda r: _on_devices(gpu_layers_text(r.n_gpu_layers, r.n_layers), r.devices) if r.n_layers is not None else "-"),
    ("PPL", lambda r: f"{r.ppl:.3f} ± {r.ppl_stderr:.3f}" if r.ppl is not None else "-"),
    ("KLD", lambda r: f"{r.kld:.5f}" if r.kld is not None else "-"),
    ("same top", lambda r: f"{r.same_top * 100:.1f}%" if r.same_top is not None else "-"),
]

def _on_devices(layers: str, devices: list[str] | None) -> str:
    return f"{layers} {'+'.join(devices)}" if devices else layers


# Which columns a terminal shows first when it cannot show them all (lower first); the table keeps COLUMNS' order.
PRIORITY = ["level", "tg t/s", "pp t/s", "size", "PPL", "KLD", "GPU layers", "TTFT ms", "peak RAM", "bpw", "same top", "load s"]
CELL_PAD = 3  # a rich table cell's padding and border


def columns_that_fit(rows: list[list[str]], width: int) -> list[int]:
    """Indexes into COLUMNS to show in `width` characters: a column of nothing but "-" never, the others in
    PRIORITY's order while each one's widest cell and header fit whole."""
    widths = []
    for i, (header, _) in enumerate(COLUMNS):
        cells = [r[i] for r in rows if i < len(r)]
        if i and cells and all(c in ("-", "") for c in cells):
            widths.append(None)
            continue
        widths.append(max([len(header)] + [len(c) for c in cells]) + CELL_PAD)
    chosen, used = [], 1
    for header in PRIORITY:
        i = next(k for k, (h, _) in enumerate(COLUMNS) if h == header)
        if widths[i] is not None and used + widths[i] <= width:
            chosen.append(i)
            used += widths[i]
    return sorted(chosen)


CSV_FIELDS = ["file", "level", "size_bytes", "bits_per_weight", "pp_mean", "pp_std", "tg_mean", "tg_std", "ttft_s",
              "load_s", "peak_rss_bytes", "n_threads", "n_ctx", "n_layers", "n_gpu_layers", "ppl", "ppl_stderr", "kld",
              "kld_p99", "delta_p", "same_top", "error", "lora", "devices"]  # new columns go last


def to_csv(report: BenchReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in report.results:
        row = {k: getattr(r, k) for k in CSV_FIELDS if hasattr(r, k)}
        for key in ("pp", "tg"):
            m = getattr(r, key)
            row[f"{key}_mean"], row[f"{key}_std"] = (m.mean, m.std) if m else (None, None)
        row["devices"] = "+".join(r.devices or [])
        writer.writerow(row)
    return out.getvalue()


def to_markdown(report: BenchReport) -> str:
    lines = [f"### {report.model}", "", "| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in report.results:
        cells = [fmt(r) for _, fmt in COLUMNS] if r.ok else [r.label, "failed: " + (r.error or "")] + [""] * (len(COLUMNS) - 2)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"_{report.method}. Machine: {report.machine['summary']}._", ""]
    return "\n".join(lines)


def merge(reports: list[BenchReport]) -> BenchReport:
    first = reports[0]
    return BenchReport(model=", ".join(r.model for r in reports), config=first.config, method=first.method,
                       machine=first.machine, results=[x for r in reports for x in r.results],
                       base_level=first.base_level)


def save_into_manifest(report: BenchReport, folder: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"--save needs a package folder; {folder} is a single file")
    with updating(folder) as manifest:  # a package, bench or eval run writing at the same time keeps its records
        for r in report.results:
            entry = manifest.entry(r.level)
            if entry is None or not r.ok or r.lora is not None:  # the file's own numbers, not with an adapter
                continue
            if r.ppl is not None:
                entry.ppl = r.ppl
            if r.kld is not None:
                entry.kld = r.kld
            entry.bench = {"pp_tps": r.pp.mean if r.pp else None, "tg_tps": r.tg.mean if r.tg else None,
                           "ttft_s": r.ttft_s, "peak_rss_bytes": r.peak_rss_bytes, "machine": report.machine["summary"],
                           "machine_id": report.machine.get("id"), "n_threads": r.n_threads,
                           "n_gpu_layers": r.n_gpu_layers, "created": report.created}


def load_report(path: Path) -> BenchReport:
    try:
        return BenchReport.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EdgeError(f"cannot read bench report {path}: {exc}") from exc
