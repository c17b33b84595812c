"""`edgellm inspect`: what a GGUF file holds (metadata and tensor summary), read from its header."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

# Metadata keys shown in the table before the rest (the rest follow in file order).
HEADLINE = ("general.architecture", "general.name", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre")


def summary(path: Path) -> dict:
    """The report as plain data (what --json prints)."""
    from ..formats.gguf_info import read_gguf

    info = read_gguf(path)
    types: Counter[str] = Counter()
    type_bytes: Counter[str] = Counter()
    for t in info.tensors:
        types[t.ggml_type] += 1
        type_bytes[t.ggml_type] += t.n_bytes
    return {
        "path": str(info.path),
        "file_size": info.file_size,  # of all parts, for a model split in several files
        "parts": [str(p) for p in info.files],
        "arch": info.arch,
        "name": info.name,
        "file_type": info.file_type,
        "n_params": info.n_params,
        "bits_per_weight": round(info.bits_per_weight, 3),
        "n_layers": info.n_layers,
        "n_embd": info.n_embd,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "n_ctx_train": info.n_ctx_train,
        "n_vocab": info.n_vocab,
        "chat_template": info.chat_template,
        "tensor_types": {k: {"count": types[k], "bytes": type_bytes[k]} for k in sorted(types)},
        "tensors": [{"name": t.name, "type": t.ggml_type, "shape": list(t.shape), "bytes": t.n_bytes} for t in info.tensors],
        "metadata": info.metadata,
    }


def package_summary(folder: Path) -> dict:
    """A package's levels with the task accuracy `eval --save` recorded (what --json prints for a folder)."""
    from ..plan.catalog import projector_facts
    from ..store.manifest import accuracy_summary
    from ..store.models import resolve_model

    ref = resolve_model(folder)
    return {"package": ref.name, "path": str(ref.source), "levels": [
        {"level": f.level, "file": f.path.name, "size": f.size, "bits_per_weight": round(f.info.bits_per_weight, 3),
         "accuracy": accuracy_summary(f.accuracy) or None} for f in ref.files], "projector": projector_facts(ref)}


def _print_package(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..fsutil import human_bytes
    from ..store.manifest import accuracy_cell

    tasks = sorted({t for lv in data["levels"] for t in (lv["accuracy"] or {})})
    table = Table("level", "file", "size", "bpw", *(f"{t} acc %" for t in tasks),
                  title=f"{data['package']}: {data['path']}", title_justify="left")
    for lv in data["levels"]:
        records = [(lv["accuracy"] or {}).get(t) for t in tasks]
        cells = [f"{accuracy_cell(r)} ({r['tasks']})" if r else "-" for r in records]
        table.add_row(lv["level"], lv["file"], human_bytes(lv["size"]), f"{lv['bits_per_weight']:.2f}", *cells)
    Console().print(table)
    if p := data["projector"]:
        up_to = "" if p["tokens_fixed"] else "up to "
        cost = f"; an image costs {up_to}{p['image_tokens']} tokens of context" if p["image_tokens"] is not None else ""
        print(f"images: projector {p['file']} ({p['file_type']}, {human_bytes(p['size'])}){cost}")
    if not tasks:
        print("no task accuracy recorded (edgellm eval PACKAGE --hellaswag FILE --save)")


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (long arrays summarised).")
@click.option("--tensors", "all_tensors", is_flag=True, help="List every tensor, not only the non-layer ones and layer 0.")
def inspect(file: Path, as_json: bool, all_tensors: bool) -> int:
    """Show FILE.gguf's metadata and a summary of its tensors; for a package folder, its levels with the task
    accuracy (% ± standard error, tasks) that `edgellm eval --save` recorded, and its vision projector.

    A model split in several files (`<name>-00001-of-00003.gguf` ...) is shown whole from its first part:
    its size and tensors are those of every part."""
    if file.is_dir():
        data = package_summary(file)
        if as_json:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            _print_package(data)
        return 0
    data = summary(file)
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return 0

    from rich.console import Console
    from rich.table import Table

    from ..fsutil import human_bytes

    console = Console()
    console.print(
        f"[bold]{data['path']}[/bold]  {data['arch']}  {data['file_type']}  "
        f"{data['n_params'] / 1e6:.1f}M params  {data['bits_per_weight']:.2f} bits/weight  {human_bytes(data['file_size'])}"
        + (f"  split in {len(data['parts'])} parts" if len(data["parts"]) > 1 else "")
    )
    meta = Table("key", "value", title="metadata", title_justify="left")
    keys = [k for k in HEADLINE if k in data["metadata"]] + [k for k in data["metadata"] if k not in HEADLINE]
    for key in keys:
        value = data["metadata"][key]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        meta.add_row(key, text if len(text) <= 120 else text[:117] + "...")
    console.print(meta)

    kinds = Table("type", "tensors", "size", title="tensor types", title_justify="left")
    for kind, row in data["tensor_types"].items():
        kinds.add_row(kind, str(row["count"]), human_bytes(row["bytes"]))
    console.print(kinds)

    shown = [t for t in data["tensors"] if all_tensors or not t["name"].startswith("blk.") or t["name"].startswith("blk.0.")]
    tensors = Table("name", "type", "shape", "size", title=f"tensors ({len(shown)} of {len(data['tensors'])}; --tensors for all)", title_justify="left")
    for t in shown:
        tensors.add_row(t["name"], t["type"], "x".join(map(str, t["shape"])), human_bytes(t["bytes"]))
    console.print(tensors)
    return 0
