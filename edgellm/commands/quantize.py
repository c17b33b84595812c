"""`edgellm quantize`: make one or more quantization levels from a float GGUF base file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import levels_per_pass
from .package import LEVELS_HELP, ProgressReporter, print_levels_table


def _list_levels() -> None:
    from rich.console import Console
    from rich.table import Table

    from ..quantize.levels import ALIASES, TABLE

    t = Table(title="quantization levels (llama.cpp file types)")
    for col in ("level", "nominal bpw", "needs imatrix", "note"):
        t.add_column(col)
    for lv in TABLE.values():
        t.add_row(lv.name, f"{lv.bpw:.2f}", "yes" if lv.needs_imatrix else "", lv.note)
    Console().print(t)
    click.echo("aliases: " + ", ".join(f"{a}={b}" for a, b in ALIASES.items()))


@click.command("quantize")
@click.argument("base", type=click.Path(path_type=Path), required=False)
@click.option("--levels", default=None, metavar="LIST", help=LEVELS_HELP)
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the files (default: beside BASE). Files are named <BASE stem>-<LEVEL>.gguf.")
@click.option("--allow-requantize", is_flag=True, help="Accept an already-quantized BASE (adds error to error).")
@levels_per_pass
@click.option("--list", "list_levels", is_flag=True, help="List every level llama.cpp offers and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def quantize(base: Path | None, levels: str | None, out_dir: Path | None, allow_requantize: bool, jobs: int,
             list_levels: bool, as_json: bool) -> int:
    """Quantize BASE.gguf (F32/F16/BF16) to each level: byte for byte what llama.cpp's quantizer writes, all levels
    in one pass over BASE."""
    from ..errors import UsageError
    from ..formats.gguf_info import read_gguf
    from ..store.package import quantize_levels
    from ..quantize.levels import parse_levels, prepare

    if list_levels:
        _list_levels()
        return 0
    if base is None or not levels:
        raise UsageError("give a BASE.gguf and --levels (e.g. --levels Q8_0,Q4_K_M); --list shows the levels")
    wanted = parse_levels(levels)
    job = prepare(base, wanted, out_dir, allow_requantize)
    with ProgressReporter() as ui:
        made = quantize_levels(base, job.out_dir, job.stem, wanted, allow_requantize=allow_requantize, jobs=jobs,
                               reporter=ui.reporter())
    rows = []
    for lv in wanted:
        path, sha = made[lv.name]
        q = read_gguf(path)
        rows.append({"level": lv.name, "file": str(path), "bytes": q.file_size,
                     "bits_per_weight": round(q.bits_per_weight, 4), "sha256": sha})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_levels_table(rows, f"quantized {base.name}")
    return 0
