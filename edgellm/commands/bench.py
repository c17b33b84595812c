"""`edgellm bench`: tokens/s and quality per quant level; `edgellm bench compare A.json B.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..bench.run import BenchConfig, BenchReport, FileResult, compare, default_quality_text, run_bench
from ..bench.report import COLUMNS, columns_that_fit, load_report, merge, save_into_manifest, to_csv, to_markdown
from ..errors import EdgeError, UsageError
from ..fsutil import atomic_output, human_bytes
from .options import CONTEXT, DEVICE_HELP, DEVICES, GPU_LAYERS, LORA, THREADS, WORKERS, WORKERS_HELP


class _DefaultRun(click.Group):
    """`edgellm bench MODEL…` runs a benchmark; `edgellm bench compare …` compares two reports."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultRun, context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Tokens/s (prompt and generation), TTFT, memory and quality per quant level.

    \b
    edgellm bench MODEL… [options]     benchmark files or packages (see `edgellm bench run -h`)
    edgellm bench compare A.json B.json
    """


def _resolve(model: str | None) -> tuple[list, list[FileResult]]:
    """The model refs to benchmark for one argument, and the files that cannot be read (reported with the
    results, so the others still run). A package with a damaged level is benchmarked file by file."""
    from ..formats.gguf_split import is_later_part
    from ..store.models import resolve_model

    try:
        ref = resolve_model(model)
        if not ref.skipped:
            return [ref], []
    except EdgeError as exc:
        if model is None or not Path(model).is_dir():
            return [], [FileResult(file=str(model), level="?", size_bytes=0, bits_per_weight=0.0, error=str(exc))]
    refs, failed = [], []
    for f in sorted(Path(model).glob("*.gguf")):
        if is_later_part(f.name):
            continue  # measured with its first part
        try:
            refs.append(resolve_model(f))
        except EdgeError as exc:
            failed.append(FileResult(file=f.name, level="?", size_bytes=0, bits_per_weight=0.0, error=str(exc)))
    return refs, failed


def _levels(value: str | None) -> list[str] | None:
    """None (every level) when --levels is not given; given, it must name at least one."""
    if value is None:
        return None
    levels = [v.strip() for v in value.split(",") if v.strip()]
    if not levels:
        raise UsageError("--levels is empty: give levels like Q8_0,Q4_K_M, or leave it out for all of them")
    return levels


@bench.command("run")
@click.argument("models", nargs=-1)
@click.option("--levels", help="Only these levels of a package, comma-separated (e.g. Q8_0,Q4_K_M).")
@click.option("-p", "n_prompt", default=512, show_default=True, help="Prompt tokens per pp run (0: skip).")
@click.option("-n", "n_gen", default=128, show_default=True, help="Generated tokens per tg run (0: skip).")
@click.option("-r", "reps", default=5, show_default=True, help="Repetitions after one warm-up run.")
@click.option("--ngl", type=GPU_LAYERS, default="auto", show_default=True, help="GPU layers: auto (the planner) or a number.")
@click.option("--device", "devices", type=DEVICES, help=DEVICE_HELP)
@click.option("--threads", type=THREADS, help=f"CPU threads, 1 to {THREADS.high} [default: physical cores].")
@click.option("--ctx", "n_ctx", type=CONTEXT, help="Context size [default: enough for -p / -n].")
@click.option("--quality", "quality", is_flag=False, flag_value="builtin", default=None, metavar="[TEXT]",
              help="Also measure perplexity (and KL divergence vs a F16/BF16/F32 base) on TEXT, a file; "
                   "alone: a small built-in English + Chinese text.")
@click.option("--quality-ctx", type=CONTEXT, default=512, show_default=True,
              help="Chunk size for perplexity (llama-perplexity's -c).")
@click.option("--draft", "drafts", multiple=True, metavar="auto|ngram|MODEL",
              help="Also measure speculative decoding with this draft (repeatable): speed-up over plain decoding, "
                   "acceptance rate and tokens per checking step, on a reply that repeats its prompt and a free-form one.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write one CSV row per file.")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a Markdown table.")
@click.option("-o", "--output", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: tokens/s and KL divergence against file size, Pareto front marked.")
@click.option("--save", "save_manifest", is_flag=True, help="Write the measured numbers into the package manifest.")
@click.option("--rpc", type=WORKERS, help=WORKERS_HELP)
@click.option("--lora", "loras", type=LORA, multiple=True,
              help="A LoRA adapter GGUF applied at SCALE (default 1); repeatable. Each file is measured without and "
                   "with the adapters (KL divergence of the adapter rows: from the base without them).")
def run_cmd(models, levels, n_prompt, n_gen, reps, ngl, devices, threads, n_ctx, quality, quality_ctx, drafts, as_json, csv_path,
            md_path, json_path, plot_path, save_manifest, rpc, loras) -> int:
    """Benchmark each GGUF file or package (all its levels) given; with none, the default model."""
    from ..engine.adapters import read_adapter
    from ..progress import progress_bar

    for path, scale in loras:  # a bad adapter is said before anything is measured
        read_adapter(path, scale)

    levels = _levels(levels)
    text = None
    if quality == "builtin":
        text = default_quality_text()
    elif quality is not None:
        qpath = Path(quality)
        if not qpath.is_file():
            raise UsageError(f"no such quality text file: {qpath}")
        text = qpath.read_text(encoding="utf-8", errors="replace")
    if rpc and save_manifest:  # the manifest keeps speeds of this machine alone, by GPU layers
        raise UsageError("--save keeps speeds measured on this machine alone: leave it out with --rpc")
    cfg = BenchConfig(n_prompt=n_prompt, n_gen=n_gen, reps=reps, ngl=ngl, devices=devices, threads=threads, n_ctx=n_ctx,
                      quality_text=text, quality_ctx=quality_ctx, rpc=rpc, loras=tuple((str(p), s) for p, s in loras),
                      drafts=tuple(drafts))
    refs, unreadable = [], []
    for m in models or [None]:
        found, failed = _resolve(m)
        refs += found
        unreadable += failed

    if not refs:  # said before a progress bar is drawn, so the reason is the only line
        raise EdgeError(unreadable[0].error if len(unreadable) == 1 else "no model could be read")

    reports = []
    with progress_bar("steps") as bar:
        task = bar.add_task("bench", total=None)

        def on_step(msg: str, total: int) -> None:
            # Called as each step starts; the count shows which step is running.
            bar.update(task, description=msg, total=total, advance=1)

        for ref in refs:
            bar.reset(task)
            reports.append(run_bench(ref, cfg, levels, on_step))

    if save_manifest:
        for ref, report in zip(refs, reports):
            save_into_manifest(report, Path(ref.source))
    combined = reports[0] if len(reports) == 1 else merge(reports)
    combined.results += unreadable
    if json_path:
        with atomic_output(json_path) as tmp:
            tmp.write_text(json.dumps(combined.to_dict(), indent=2) + "\n")
    if csv_path:
        with atomic_output(csv_path) as tmp:
            tmp.write_text(to_csv(combined))
    if md_path:
        with atomic_output(md_path) as tmp:
            tmp.write_text(to_markdown(combined))
    if plot_path:
        from ..bench.plot import plot

        plot(combined, plot_path)
    if as_json:
        click.echo(json.dumps(combined.to_dict(), indent=2))
    else:
        _print_table(combined)
    for r in combined.failed:
        click.echo(f"edgellm: {r.file}: {r.error}", err=True)
    return 1 if combined.failed else 0


def _print_table(report: BenchReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    rows = [[fmt(r) for _, fmt in COLUMNS] for r in report.results if r.ok]
    shown = columns_that_fit(rows, console.width)  # at 80 columns: the values, not "138…"
    table = Table(title=f"{report.model}", caption=report.method, caption_justify="left")
    for i in shown:
        header = COLUMNS[i][0]
        table.add_column(header, justify="left" if header == "level" else "right", no_wrap=True)
    for r in report.results:
        if r.ok:
            cells = [fmt(r) for _, fmt in COLUMNS]
            table.add_row(*(cells[i] for i in shown))
        else:
            table.add_row(r.label, f"[red]failed: {r.error}[/]")
    console.print(table)
    _print_speculation(console, report)


def _print_speculation(console, report: BenchReport) -> None:
    """Speculative decoding per level, draft and task, when --draft asked for it."""
    from rich.table import Table

    rows = [(r, s) for r in report.results if r.ok for s in (r.speculation or [])]
    if not rows:
        return
    table = Table(title="speculative decoding (greedy; speed-up over plain decoding, alternated runs)")
    for header in ("level", "draft", "task", "speed-up", "acceptance", "tokens/step", "same text"):
        table.add_column(header, justify="left" if header in ("level", "draft", "task") else "right", no_wrap=True)
    for r, s in rows:
        table.add_row(r.label, s["draft"], s["task"], f"{s['speedup']:.2f}x", f"{s['acceptance']:.0%}",
                      f"{s['tokens_per_step']:.2f}", "yes" if s["same_text"] else "no")
    console.print(table)


# --- compare -----------------------------------------------------------------------------------------


@bench.command("compare")
@click.argument("a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare_cmd(a: Path, b: Path, as_json: bool) -> None:
    """Compare two reports written with `edgellm bench -o`: each metric in A, B and B/A per level."""
    rows = compare(load_report(a), load_report(b))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{a.name} → {b.name}")
    for header in ("level", "metric", "A", "B", "B/A"):
        table.add_column(header, justify="left" if header in ("level", "metric") else "right")

    def num(v):
        return "-" if v is None else f"{v:.4g}"

    for row in rows:
        for key, v in row.items():
            if key != "level" and (v["a"] is not None or v["b"] is not None):
                table.add_row(row["level"], key, num(v["a"]), num(v["b"]), num(v["ratio"]))
    Console(file=sys.stdout).print(table)
