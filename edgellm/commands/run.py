"""`edgellm run`: one prompt through the model's chat template, the reply streamed to stdout.

Stats (plan, load time, time to first token, prompt and generation speed) go to stderr, so the
reply can be piped on its own.
"""

from __future__ import annotations

import json
import sys

import click

from .options import (
    CHAT_TEMPLATE, CHAT_TEMPLATE_HELP, CONTEXT, GPU_LAYERS, LORA, LORA_HELP, MIN_P, MIN_SPEED, MIN_SPEED_HELP, REPEAT_PENALTY,
    TEMPERATURE, THINK_HELP, THREADS, TOP_K, TOP_P, WORKERS, WORKERS_HELP, DEVICES, DEVICE_HELP, draft_options,
)
from .plan import KV_CHOICES
from ..engine.reasoning import REASONING


def _stats_lines(engine, stats) -> list[str]:
    from ..plan.planner import threads_text

    i = engine.info
    lora = f" · LoRA {', '.join(i.loras)}" if i.loras else ""
    projector = f" · projector {i.projector.name}" if i.projector else ""
    thinking = f" ({stats.thinking_tokens} thinking)" if stats.thinking_tokens else ""
    return [
        f"plan: {i.level} · {i.gpu_layers} layers on {'the workers' if getattr(i.plan, 'workers', ()) else ', '.join(i.devices) or 'the GPU'} · "
        f"context {i.n_ctx} ({i.kv_type}) · "
        f"{threads_text(i.n_threads)}{lora}{projector} · loaded in {i.load_s:.2f} s",
        f"prompt: {stats.prompt_tokens} tokens ({stats.prompt_eval_tokens} evaluated) at {stats.prompt_tps:.1f} tok/s · "
        f"first token after {stats.ttft_s:.3f} s",
        f"reply: {stats.gen_tokens} tokens{thinking} at {stats.gen_tps:.1f} tok/s · ended by {stats.finish_reason}",
        *([speculation_line(stats)] if stats.draft else []),
    ]


DIM, PLAIN = "\x1b[2m", "\x1b[0m"


def _stream_split(reply, stream, engine, show_thinking: bool) -> None:
    """A thinking model's answer to stdout as it comes; its reasoning to stderr (dimmed on a terminal, between
    <think> lines elsewhere) only when asked for."""
    out, err = sys.stdout, sys.stderr
    dim = err is not None and err.isatty()
    shown = show_thinking and err is not None
    opened = False
    for piece in stream:
        for part in reply.push(piece):
            _write_part(part, out, err if shown else None, dim, opened)
            opened = opened or (shown and part.kind == REASONING)
    for part in reply.flush():
        _write_part(part, out, err if shown else None, dim, opened)
        opened = opened or (shown and part.kind == REASONING)
    if opened:
        err.write(PLAIN + "\n" if dim else "\n</think>\n")
        err.flush()
    out.write("\n")
    out.flush()
    _count_thinking(reply, engine)


def _write_part(part, out, err, dim: bool, opened: bool) -> None:
    if part.kind == REASONING:
        if err is not None:
            err.write(("" if opened else DIM if dim else "<think>\n") + part.text)
            err.flush()
        return
    out.write(part.text)
    out.flush()


def _split(reply, stream, engine) -> tuple[str | None, str]:
    for piece in stream:
        reply.push(piece)
    reply.flush()
    _count_thinking(reply, engine)
    return reply.split()


def _count_thinking(reply, engine) -> None:
    stats = engine.last_stats  # set once the stream started
    stats.thinking_tokens = min(reply.thinking_pieces, stats.gen_tokens)


def speculation_line(stats) -> str:
    """How speculation went in one reply."""
    return (f"speculation: {stats.draft} · {stats.accepted} of {stats.drafted} guessed tokens kept "
            f"({stats.acceptance:.0%}) · {stats.tokens_per_step:.2f} tokens per checking step ({stats.spec_steps} steps)")


def _stdin_prompt(asked: bool) -> str:
    """The prompt piped in. A closed stdin (cron, `<&-`) has none, nor a terminal unless `-p -` asked for it."""
    from ..errors import UsageError

    if sys.stdin is None:
        raise UsageError("no prompt: give -p TEXT or pipe it in (stdin is closed)")
    if sys.stdin.isatty() and not asked:
        raise UsageError("no prompt: give -p TEXT or pipe it in")
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise UsageError(f"the prompt on stdin is not UTF-8 text (byte {exc.start})") from None


def _utf8(text: str, what: str) -> str:
    """Bytes that are not UTF-8 (in argv, or piped in under a C locale) arrive as lone surrogates."""
    from ..errors import UsageError

    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{what} is not UTF-8 text (character {exc.start})") from None
    return text


@click.command("run", epilog="MODEL may also be a store name, or a Hugging Face or ModelScope repo id: the level the "
               "planner picks for this machine is pulled (from a checkpoint: converted and quantized to that level only) "
               "into the store first.")
@click.argument("model", required=False)
@click.option("-p", "--prompt", help="The user message ('-' or omitted with piped input: read stdin).")
@click.option("-s", "--system", help="A system message before the prompt.")
@click.option("-i", "--image", "images", type=click.Path(dir_okay=False), multiple=True,
              help="An image the prompt is about (PNG, JPEG, WebP, GIF, BMP); repeat for more. Needs a vision model's projector.")
@click.option("--mmproj", type=click.Path(dir_okay=False), help="A vision model's projector GGUF (default: the package's own).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--temp", "temperature", type=TEMPERATURE, default=0.7, show_default=True, help="0 to 5; 0 = greedy.")
@click.option("--top-k", type=TOP_K, default=40, show_default=True, help="0 = off.")
@click.option("--top-p", type=TOP_P, default=0.95, show_default=True, help="Above 0, at most 1; 1 = off.")
@click.option("--min-p", type=MIN_P, default=0.05, show_default=True, help="0 to 1; 0 = off.")
@click.option("--repeat-penalty", type=REPEAT_PENALTY, default=1.1, show_default=True, help="Above 0, at most 10; 1.0 = off.")
@click.option("--seed", type=int, help="Sampling seed (default: random).")
@click.option("--ctx", type=CONTEXT, help="Context size in tokens, 256 or more (default: planned).")
@click.option("--ngl", type=GPU_LAYERS, help="Layers on the GPU: auto (the planner, default) or a number.")
@click.option("--device", "devices", type=DEVICES, help=DEVICE_HELP)
@click.option("--kv-type", type=KV_CHOICES, help="KV cache type (default f16).")
@click.option("-t", "--threads", type=THREADS, help=f"CPU threads, 1 to {THREADS.high} (default: the physical cores other programs leave idle).")
@click.option("--min-speed", type=MIN_SPEED, metavar="TOK_S", help=MIN_SPEED_HELP)
@click.option("--chat-template", type=CHAT_TEMPLATE, help=CHAT_TEMPLATE_HELP)
@click.option("--rpc", type=WORKERS, help=WORKERS_HELP)
@click.option("--lora", "loras", type=LORA, multiple=True, help=LORA_HELP)
@draft_options
@click.option("--think/--no-think", default=None, help=THINK_HELP)
@click.option("--show-thinking", is_flag=True, help="Print a thinking model's reasoning too, to stderr before the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply (reasoning and answer apart) and stats as one JSON object instead of streaming.")
def run(model, prompt, system, images, mmproj, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, ctx, ngl, devices, kv_type, threads,
        min_speed, chat_template, rpc, loras, draft, draft_max, draft_min, think, show_thinking, as_json) -> int:
    """Answer one prompt with MODEL (a .gguf file or package folder; default: the demo model)."""
    from ..errors import UsageError
    from ..engine.draft import check_lengths, for_plan
    from ..engine.launch import plan_model
    from ..engine.reasoning import Reply, opened_in, switch_note, thinks
    from ..engine.runtime import Engine, Sampling
    from .hubref import local_model
    from .images import attach

    if sys.stdout is None:
        raise UsageError("stdout is closed: there is nowhere to write the reply")
    if prompt is None or prompt == "-":
        prompt = _stdin_prompt(asked=prompt == "-")
    if not _utf8(prompt, "the prompt").strip():
        raise UsageError("the prompt is empty")
    if system is not None:
        _utf8(system, "the system message")
    check_lengths(draft_min, draft_max)
    model = local_model(model, min_speed, rpc)  # a hub id: pulled (converted, quantized) first
    model, pictures, marked = attach(model, mmproj, images, prompt)  # checked and decoded before anything loads

    plan = plan_model(model, ctx=ctx, kv_type=kv_type, ngl=ngl, devices=devices, threads=threads, chat_template=chat_template,
                      min_speed=min_speed, rpc=rpc, loras=loras)
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": marked}]
    sampling = Sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)
    with Engine.load(plan, projector=model.projector) as engine:
        spec, notes = for_plan(plan, draft, draft_min, draft_max)
        engine.use_speculation(spec)
        for note in notes:
            click.echo(f"note: {note}", err=True)
        if engine.template_origin != "the model's own":
            click.echo(f"note: chat format {engine.template_origin}", err=True)
        note = switch_note(engine.chat_template, think)
        if note:
            click.echo(f"note: {note}", err=True)
        prompt_text = engine.render_chat(messages, think=None if note else think)
        stream = engine.stream_media(prompt_text, pictures, sampling) if pictures else engine.stream_prompt(prompt_text, sampling)
        reply = Reply(opened_in(prompt_text)) if thinks(engine.chat_template) else None
        if as_json:
            reasoning, text = _split(reply, stream, engine) if reply else (None, "".join(stream))
            out = {"text": text, "reasoning": reasoning, "stats": engine.last_stats.to_dict(), "engine": engine.info.to_dict(),
                   "plan": plan.to_dict()}
            click.echo(json.dumps(out, indent=2, ensure_ascii=False))
            return 0
        if reply is None:  # the plain path: every piece straight out
            write, flush = sys.stdout.write, sys.stdout.flush
            for piece in stream:
                write(piece)
                flush()
            write("\n")
            flush()
        else:
            _stream_split(reply, stream, engine, show_thinking)
        for line in _stats_lines(engine, engine.last_stats):
            click.echo(line, err=True)
    return 0
