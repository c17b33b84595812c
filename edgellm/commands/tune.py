"""`edgellm tune`: measure the settings that run a model fastest here, and keep them for run/chat/serve/bench."""

from __future__ import annotations

import json
from dataclasses import replace

import click

from ..plan.tune import SPEC_FLOOR, SPEC_PAYS, paying_draft, save


@click.command("tune")
@click.argument("model", required=False)
@click.option("--level", help="Tune this level of a package (default: the one the planner picks).")
@click.option("-p", "n_prompt", type=click.IntRange(16, 4096), default=128, show_default=True, help="Prompt tokens per measurement.")
@click.option("-n", "n_gen", type=click.IntRange(4, 1024), default=32, show_default=True, help="Generated tokens per measurement.")
@click.option("-r", "reps", type=click.IntRange(1, 20), default=2, show_default=True, help="Measurements per setting (the median counts).")
@click.option("--kv-quant", is_flag=True, help="Also try a q8_0 KV cache (half the memory, a small quality cost).")
@click.option("--draft", "drafts", multiple=True, metavar="auto|ngram|MODEL",
              help="Then measure whether speculative decoding with this draft pays here (repeatable): its speed-up with "
                   "the tuned settings on a reply that repeats its prompt and on a free-form one. The draft that pays "
                   "best is saved too: run, chat and serve speculate with it when --draft is left out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def tune(model, level, n_prompt, n_gen, reps, kv_quant, drafts, as_json) -> int:
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
    speculation = _speculation(ref, drafts, max(n_gen, 64), max(reps, 3)) if drafts else []
    draft = paying_draft(speculation) if drafts else None
    if draft is not None:
        save(result, draft)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), **({"speculation": speculation, "draft": draft} if drafts else {})}, indent=2))
        return 0
    b = result.best
    click.echo(f"best: {b.settings.text()}: prompt {b.pp_tps:.1f} tok/s, reply {b.tg_tps:.1f} tok/s")
    click.echo(f"a chat turn takes {b.turn_s:.2f} s instead of {result.baseline.turn_s:.2f} s with llama.cpp's defaults "
               f"({result.baseline.settings.text()}): {result.gain:.2f}x")
    click.echo("saved: run, chat, serve and bench use these for this file here unless told otherwise")
    for r in speculation:
        verdict = "pays here" if r["speedup"] >= 1.05 else "does not pay here (it pauses itself)"
        click.echo(f"speculation with {r['draft']} on {r['task']} text: {r['speedup']:.2f}x, {r['acceptance']:.0%} of guesses "
                   f"kept, {r['tokens_per_step']:.2f} tokens per step: {verdict}")
    if draft is not None:
        click.echo(f"saved: run, chat and serve speculate with {draft} when --draft is left out" if draft != "off" else
                   f"saved: no speculation by default (none was at least {SPEC_FLOOR:.2f}x on every text and "
                   f"{SPEC_PAYS:.2f}x on one)")
    return 0


def _speculation(ref, drafts: tuple[str, ...], n_gen: int, reps: int) -> list[dict]:
    """Each draft's speed-up over plain decoding, with the settings just tuned (engine.measure.SPEC_TASKS); "use"
    is what --draft would say to speculate the same way again ("ngram" or the draft's file)."""
    from ..engine.draft import choose, speculation
    from ..engine.launch import plan_model
    from ..engine.measure import SPEC_TASKS, speculation_speedup
    from ..engine.runtime import Engine

    plan = plan_model(ref, ctx=4096)
    rows = []
    with Engine.load(plan) as engine:
        for mode in drafts:
            choice = choose(plan, mode)
            spec = speculation(choice)
            if spec is None:
                continue
            use = str(choice.plan.path) if choice.plan else choice.kind
            try:
                rows += [{**speculation_speedup(engine, spec, task, n_gen, reps), "use": use} for task in SPEC_TASKS]
            finally:
                spec.close()
    return rows
