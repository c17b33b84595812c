"""`edgellm tune`: measure the settings that run a model fastest here, and keep them for run/chat/serve/bench."""

from __future__ import annotations

import json
from dataclasses import replace

import click


@click.command("tune")
@click.argument("model", required=False)
@click.option("--level", help="Tune this level of a package (default: the one the planner picks).")
@click.option("-p", "n_prompt", type=click.IntRange(16, 4096), default=128, show_default=True, help="Prompt tokens per measurement.")
@click.option("-n", "n_gen", type=click.IntRange(4, 1024), default=32, show_default=True, help="Generated tokens per measurement.")
@click.option("-r", "reps", type=click.IntRange(1, 20), default=2, show_default=True, help="Measurements per setting (the median counts).")
@click.option("--kv-quant", is_flag=True, help="Also try a q8_0 KV cache (half the memory, a small quality cost).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def tune(model, level, n_prompt, n_gen, reps, kv_quant, as_json) -> int:
    """Find the threads, micro-batch (and with --kv-quant the KV cache type) that run MODEL fastest on this
    machine, by measuring each; the best are saved and used by run, chat, serve and bench unless their options
    say otherwise. A setting is scored by the time of a chat turn (a 256-token prompt, a 128-token reply);
    the report compares it with llama.cpp's defaults (every physical core, micro-batch 512, f16 KV)."""
    from ..engine.launch import plan_model
    from ..store.models import ModelRef, resolve_model
    from ..engine.measure import tune as run_tune

    ref = resolve_model(model)
    if level:
        ref = ModelRef(ref.name, ref.source, (ref.file(level),))
    plan = plan_model(ref, ctx=max(512, n_prompt + n_gen + 16), threads=1)  # threads: swept anyway
    plan = replace(plan, notes=())

    def show(t) -> None:
        if not as_json:
            click.echo(f"  {t.settings.text():40s} prompt {t.pp_tps:8.1f} tok/s · reply {t.tg_tps:7.1f} tok/s · turn {t.turn_s:6.2f} s", err=True)

    if not as_json:
        click.echo(f"tuning {plan.path.name} ({plan.level}, {plan.gpu_layers} layers on the GPU)", err=True)
    result = run_tune(plan, n_prompt=n_prompt, n_gen=n_gen, reps=reps, kv_quant=kv_quant, on_trial=show)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return 0
    b = result.best
    click.echo(f"best: {b.settings.text()}: prompt {b.pp_tps:.1f} tok/s, reply {b.tg_tps:.1f} tok/s")
    click.echo(f"a chat turn takes {b.turn_s:.2f} s instead of {result.baseline.turn_s:.2f} s with llama.cpp's defaults "
               f"({result.baseline.settings.text()}): {result.gain:.2f}x")
    click.echo("saved: run, chat, serve and bench use these for this file here unless told otherwise")
    return 0
