"""`edgellm plan HUB_ID`: the plan for a hub repo before anything is downloaded (`edgellm.hub.remote_plan`)."""

from __future__ import annotations

import json

import click

from ..hub.remote_plan import PlanOptions
from ..plan.planner import FIT_SHORT, gpu_layers_text

__all__ = ["PlanOptions", "hub_ref", "plan_hub"]


def hub_ref(models: tuple[str, ...]) -> bool:
    """Whether `edgellm plan MODELS` names one hub repo (not a file, folder or store name)."""
    from ..hub.model import is_hub_ref

    return len(models) == 1 and is_hub_ref(models[0])


def plan_hub(ref: str, ram: str | None, vram: str | None, opts: PlanOptions, as_json: bool, rpc: str | None = None) -> int:
    """Plan the repo `ref` for this machine (or the `ram`/`vram` given): the level the planner picks, what
    each level would use, and what the choice costs."""
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from ..errors import NotEnoughSpace
    from ..fsutil import human_bytes
    from ..plan.hardware import detect, parse_size
    from ..hub.download import open_repo
    from ..hub.remote_plan import plan_repo
    from ..errors import UsageError
    from ..engine.launch import choose_threads

    if rpc:
        raise UsageError("--rpc plans a model on this machine: pull the level to split first (edgellm pull REPO --level L)")
    hw = detect()
    threads, notes = choose_threads(hw, opts.threads)
    hw = hw.with_overrides(ram=parse_size(ram) if ram else None, vram=parse_size(vram) if vram is not None else None)
    opts = replace(opts, threads=threads)

    say = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    rp = plan_repo(open_repo(ref, say=say), hw, opts, say=say)
    if rp.plan is not None:
        rp = replace(rp, plan=replace(rp.plan, notes=rp.plan.notes + notes))
    if as_json:
        click.echo(json.dumps(rp.to_dict(), indent=2))
        return 0 if rp.plan else NotEnoughSpace.exit_code
    console = Console()
    if rp.plan:
        console.print(rp.plan.explain(), highlight=False, markup=False)
    t = Table(title=f"Levels of {rp.repo_id} (tok/s: decode, ~ predicted)", title_justify="left")
    for col in ("level", "size", "fit", "GPU layers", "context", "RAM", "VRAM", "tok/s", "note"):
        t.add_column(col, justify="left" if col in ("level", "fit", "note") else "right")
    for row in rp.rows:
        chosen = row.level == rp.level
        size = ("~" if row.estimated else "") + human_bytes(row.size)
        lf = row.fit
        cells = [FIT_SHORT[lf.fit], gpu_layers_text(lf.n_gpu_layers, lf.n_layers) if lf.fit != "no" else "-", str(lf.n_ctx),
                 human_bytes(lf.ram), human_bytes(lf.vram) if lf.vram else "-", _decode_speed(lf.speed)] if lf else ["-"] * 6  # fmt: skip
        t.add_row(("▶ " if chosen else "  ") + row.level, size, *cells, row.note,
                  style="bold" if chosen else ("dim" if not lf or lf.fit == "no" else None))  # fmt: skip
    console.print(t)
    for line in rp.cost_lines():
        console.print(line, highlight=False, markup=False)
    if rp.plan is None:
        raise NotEnoughSpace(f"{rp.repo_id}: {rp.why_not}")
    return 0


def _decode_speed(speed) -> str:
    """"~10.1": the decode tokens/s the planner judged the level by (~: predicted, not measured here)."""
    return "-" if speed is None else ("~" if speed.source == "predicted" else "") + f"{speed.decode_tps:.1f}"
