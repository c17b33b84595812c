"""`edgellm hw`: what this machine offers a model (RAM, CPU, GPUs, what the llama.cpp build can use)."""

from __future__ import annotations

import json

import click


@click.command("hw")
@click.option("--json", "as_json", is_flag=True, help="Print the hardware profile as JSON.")
def hw(as_json: bool) -> int:
    """Show RAM, CPU cores, GPUs with free VRAM, and the llama.cpp build's backends."""
    from ..plan.hardware import detect

    profile = detect()
    if as_json:
        click.echo(json.dumps(profile.to_dict(), indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table

    from ..fsutil import human_bytes

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("RAM", f"{human_bytes(profile.ram_available)} available of {human_bytes(profile.ram_total)}")
    t.add_row("CPU", f"{profile.cpu_name}: {profile.cpu_cores} cores, {profile.cpu_threads} threads")
    for g in profile.gpus:
        shared = ", shared with the CPU" if g.unified else ""
        where = f" ({g.backend})" if g.device else f" (seen by {g.source}; this llama.cpp cannot use it)"
        t.add_row(g.device or f"GPU {g.index}", f"{g.name}{where}: {human_bytes(g.free)} free of {human_bytes(g.total)}{shared}")
    if not profile.gpus:
        t.add_row("GPU", "none")
    t.add_row("llama.cpp", f"backends {', '.join(profile.llama.backends)}; GPU offload {'yes' if profile.llama.gpu_offload else 'no'}")
    for note in profile.notes:
        t.add_row("note", note)
    Console().print(t)
    return 0
