"""`edgellm plan`: which file, how many GPU layers and what context a model gets on this (or another) machine."""

from __future__ import annotations

import json
from dataclasses import replace

import click

from ..engine.draft import planned
from ..plan.planner import gpu_layers_text
from .options import (
    CONTEXT, DEVICE_HELP, DEVICES, GPU_LAYERS, LORA, LORA_HELP, MIN_SPEED, MIN_SPEED_HELP, THREADS, WORKERS, WORKERS_HELP, Range,
)

KV_CHOICES = click.Choice(["f16", "q8_0", "q4_0"])  # edgellm.plan.memory.KV_TYPES, without loading llama.cpp for --help


@click.command("plan")
@click.argument("models", nargs=-1)
@click.option("--ctx", type=CONTEXT, help="Context size in tokens (default: up to 8192, shrunk to fit).")
@click.option("--min-ctx", type=CONTEXT, default=2048, show_default=True, help="Never shrink the context below this.")
@click.option("--kv-type", type=KV_CHOICES, help="KV cache type (default f16; q8_0 halves it, q4_0 quarters it).")
@click.option("--ram", help="Plan for this much free RAM instead of this machine's (e.g. 16G).")
@click.option("--vram", help="Plan for one GPU with this much free VRAM (e.g. 8G; 0 = no GPU).")
@click.option("--ngl", type=GPU_LAYERS, help="Layers on the GPU: auto (the planner, default) or a number.")
@click.option("--device", "devices", type=DEVICES, help=DEVICE_HELP)
@click.option("-t", "--threads", type=THREADS, help=f"CPU threads, 1 to {THREADS.high} (default: the physical cores other programs leave idle).")
@click.option("--min-speed", type=MIN_SPEED, metavar="TOK_S", help=MIN_SPEED_HELP)
@click.option("--rpc", type=WORKERS, help=WORKERS_HELP + " Each is asked what it lends.")
@click.option("--lora", "loras", type=LORA, multiple=True, help=LORA_HELP)
@click.option("--max-loss", type=Range(float, 0.0, 100.0), metavar="POINTS",
              help="The smallest level that fits whose task accuracy recorded by `eval --save` is within POINTS "
                   "percentage points of the best level's, on every recorded task (levels without a record are "
                   "not eligible).")
@click.option("--max-loss-task", metavar="NAME", help="With --max-loss: only this recorded task (e.g. hellaswag, exam:mmlu; exam: every exam file's).")
@click.option("--draft", metavar="auto|ngram|MODEL|off",
              help="Also plan speculative decoding with this draft beside the chosen level: which draft, and the memory a "
                   "draft model takes (default: what `edgellm tune --draft` found pays here, else none).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and the table of levels as JSON.")
def plan(models: tuple[str, ...], ctx, min_ctx, kv_type, ram, vram, ngl, devices, threads, min_speed, rpc, loras,
         max_loss, max_loss_task, draft, as_json: bool) -> int:
    """Plan MODELS (a package folder, one or several .gguf files; default: the demo model).

    Picks the highest-quality level that fits and decodes at --min-speed tokens/s or more (else the fastest),
    the most GPU layers that fit with a safety margin, and shrinks the context (not below --min-ctx) before
    dropping to a lower level. Speeds are measured ones (`bench --save` on this machine) or predicted (~).

    A store name or a Hugging Face or ModelScope repo id works too. A repo is planned before anything is
    downloaded: a repo of GGUF files from the headers of the levels that could fit (the first few MiB of each,
    by byte ranges), a checkpoint from config.json and its safetensors headers (each level's size
    estimated); the plan says what the chosen level costs on disk.
    """
    from ..engine.adapters import read_adapters
    from ..errors import UsageError
    from ..plan.hardware import detect, parse_size
    from ..engine.launch import choose_threads
    from ..store.models import resolve_models
    from ..plan.planner import FIT_SHORT, make_plan
    from .plan_hub import PlanOptions, hub_ref, plan_hub

    given = click.get_current_context().get_parameter_source("min_ctx") is click.core.ParameterSource.COMMANDLINE
    if ctx is not None and given and min_ctx > ctx:
        raise UsageError(f"--min-ctx {min_ctx} is more than --ctx {ctx}: a context cannot be smaller than its minimum")
    if max_loss_task is not None and max_loss is None:
        raise UsageError("--max-loss-task goes with --max-loss POINTS")
    if max_loss is not None and (rpc or hub_ref(models)):
        raise UsageError("--max-loss plans a local package from its recorded accuracy; it does not go with --rpc or "
                         "a hub repo")
    if draft is not None and (rpc or hub_ref(models)):
        raise UsageError("--draft plans a draft beside a local model on this machine; it does not go with --rpc or a hub repo")
    if hub_ref(models):  # a hub repo, before anything is downloaded: the headers of its files, by byte ranges
        return plan_hub(models[0], ram, vram, PlanOptions(ctx, kv_type, min_ctx, ngl, threads, min_speed), as_json, rpc)
    ref = resolve_models(list(models))
    adapters = read_adapters(loras, ref.files[0].info)
    hw = detect()
    threads, notes = choose_threads(hw, threads)
    if devices is not None:
        hw, device_notes = hw.only_devices(devices)
        notes = (*notes, *device_notes)
    if rpc:
        if vram is not None:
            raise UsageError("--vram plans for a GPU here; with --rpc the workers take the layers that do not fit in --ram")
        return _over_workers(ref, hw, rpc, notes, as_json, ctx=ctx, kv_type=kv_type, min_ctx=min_ctx, loras=adapters,
                             ram=parse_size(ram) if ram else None, ngl=ngl, threads=threads, min_speed=min_speed)
    p = make_plan(
        ref,
        hw,
        ctx=ctx,
        kv_type=kv_type,
        min_ctx=min_ctx,
        ram=parse_size(ram) if ram else None,
        vram=parse_size(vram) if vram is not None else None,
        ngl=ngl,
        threads=threads,
        min_speed=min_speed,
        loras=adapters,
        max_loss=max_loss,
        max_loss_task=max_loss_task,
    )
    choice, draft_notes = planned(p, draft, hw)
    p = replace(p, notes=p.notes + notes + draft_notes)
    if as_json:
        speculation = {"draft": choice.kind, **({"path": str(choice.plan.path), "memory": choice.plan.memory.to_dict()}
                                                if choice.plan else {})}
        click.echo(json.dumps({**p.to_dict(), "speculation": speculation}, indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table

    from ..fsutil import human_bytes

    console = Console()
    console.print(p.explain(), highlight=False, markup=False)
    gpu = any(lv.vram for lv in p.levels)  # GPU columns only where a GPU is planned for
    t = Table(title="Levels (tok/s: decode / prompt, ~ predicted)", title_justify="left")
    columns = ("level", "file size", "fit", *(("GPU layers",) if gpu else ()), "context", "RAM", *(("VRAM",) if gpu else ()), "tok/s")
    for col in columns:
        t.add_column(col, justify="left" if col in ("level", "fit") else "right")
    for lv in p.levels:
        chosen = lv.level == p.level and lv.path == p.path
        gpu_cells = (_gpu_layers(lv) if lv.fit != "no" else "-",) if gpu else ()
        vram_cells = (human_bytes(lv.vram) if lv.vram else "-",) if gpu else ()
        t.add_row(
            ("▶ " if chosen else "  ") + lv.level,
            human_bytes(lv.file_size),
            FIT_SHORT[lv.fit],
            *gpu_cells,
            str(lv.n_ctx),
            human_bytes(lv.ram),
            *vram_cells,
            _speeds(lv.speed),
            style="bold" if chosen else ("dim" if lv.fit == "no" else None),
        )
    console.print(t)
    return 0


def _over_workers(ref, hw, rpc: str, notes: tuple[str, ...], as_json: bool, **options) -> int:
    """The plan over this machine and the --rpc workers: the split per device (no table of levels)."""
    from ..engine.launch import plan_over_workers

    p = plan_over_workers(ref, hw, rpc, **options)
    p = replace(p, notes=p.notes + notes)
    click.echo(json.dumps(p.to_dict(), indent=2) if as_json else p.explain())
    return 0


def _speeds(speed) -> str:
    """"~4.4 / 9": decode and prompt tokens/s for the table; ~ marks a prediction."""
    if speed is None:
        return "-"
    mark = "~" if speed.source == "predicted" else ""
    return f"{mark}{speed.decode_tps:.1f} / {speed.prompt_tps:.0f}" if speed.prompt_tps else f"{mark}{speed.decode_tps:.1f}"


def _gpu_layers(lv) -> str:
    """GPU layers of a level, and how many layers keep their experts in RAM."""
    text = gpu_layers_text(lv.n_gpu_layers, lv.n_layers)
    return text + f" (experts of {lv.n_cpu_moe} in RAM)" if lv.n_cpu_moe else text
