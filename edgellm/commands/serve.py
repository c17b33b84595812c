"""`edgellm serve`: an OpenAI-compatible HTTP API over one model, for editors, Open WebUI and scripts.

The planner sizes the KV cache for every slot (`--parallel` × `--ctx` tokens); the plan is printed at
start and served at /v1/models. Only the loopback address is served unless an API key (or --insecure)
says otherwise.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import click

from .options import (
    CHAT_TEMPLATE, CHAT_TEMPLATE_HELP, DEVICE_HELP, DEVICES, GPU_LAYERS, LORA, LORA_HELP, MIN_SPEED, MIN_SPEED_HELP, THREADS, WORKERS,
    WORKERS_HELP, draft_options,
)

CTX_STEP = 256  # llama.cpp rounds each sequence's share of the context up to this


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@click.command("serve")
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@click.option("--parallel", "-np", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Slots: requests decoded together in one batch.")
@click.option("--ctx", type=click.IntRange(min=CTX_STEP), help="Context per slot in tokens (default: the planned context / slots).")
@click.option("--queue", "max_queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests that may wait for a slot; more are answered 503.")
@click.option("--api-key", envvar="EDGELLM_API_KEY", help="Require 'Authorization: Bearer KEY' (or set EDGELLM_API_KEY).")
@click.option("--alias", help="The model name clients see (default: the model's own).")
@click.option("-t", "--threads", type=THREADS, help="CPU threads (default: the physical cores other programs leave idle).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--chat-template", type=CHAT_TEMPLATE, help=CHAT_TEMPLATE_HELP)
@click.option("--min-speed", type=MIN_SPEED, metavar="TOK_S", help=MIN_SPEED_HELP)
@click.option("--cors", multiple=True, metavar="ORIGIN", help="Allow browser pages from ORIGIN (repeatable; '*' for any).")
@click.option("--ngl", type=GPU_LAYERS, default="auto", show_default=True, help="GPU layers: auto (the planner) or a number.")
@click.option("--device", "devices", type=DEVICES, help=DEVICE_HELP)
@click.option("--rpc", type=WORKERS, help=WORKERS_HELP)
@click.option("--lora", "loras", type=LORA, multiple=True, help=LORA_HELP)
@draft_options
def serve(model, host, port, parallel, ctx, max_queue, api_key, alias, threads, insecure, chat_template, min_speed, cors, ngl, devices, rpc,
          loras, draft, draft_max, draft_min) -> int:
    """Serve MODEL (a .gguf file, package folder or store name; default: the demo model) over an
    OpenAI-compatible API at http://HOST:PORT/v1.

    A Hugging Face or ModelScope repo id is pulled first: the level the planner picks for this machine (from
    a checkpoint: converted and quantized to that level only), kept in the store.
    """
    from ..errors import UsageError
    from ..engine.draft import check_lengths, serving_speculation
    from ..engine.launch import plan_model
    from ..store.models import resolve_model
    from ..engine.runtime import Engine
    from ..serve.server import ServeOptions, bind, serve as run_server
    from .hubref import local_model

    if not _is_loopback(host) and not api_key and not insecure:
        raise UsageError(f"--host {host} lets other machines reach the API: give --api-key KEY, or --insecure to serve it without one")
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    check_lengths(draft_min, draft_max)
    sock = bind(host, port)  # before loading: a port in use fails fast
    ref = resolve_model(local_model(model, min_speed, rpc))  # a hub id: pulled (converted, quantized) first
    per_slot = -(-ctx // CTX_STEP) * CTX_STEP if ctx else None
    plan = plan_model(ref, ctx=per_slot * parallel if per_slot else None, ngl=ngl, devices=devices, threads=threads, n_seq=parallel,
                      chat_template=chat_template, min_speed=min_speed, rpc=rpc, loras=loras)
    n_ctx_train = next(f.info.n_ctx_train for f in ref.files if f.path == plan.path)
    if per_slot:  # the planner judged the total against the training context; what matters is each slot's
        plan = replace(plan, notes=tuple(n for n in plan.notes if not n.startswith(f"{plan.n_ctx} tokens is more than")))
    else:
        per_slot = plan.n_ctx // parallel // CTX_STEP * CTX_STEP
        if per_slot < CTX_STEP:
            raise UsageError(f"the planned context of {plan.n_ctx} tokens is too small for {parallel} slots: lower --parallel")
    if n_ctx_train and per_slot > n_ctx_train:
        plan = replace(plan, notes=plan.notes + (f"{per_slot} tokens per slot is more than the {n_ctx_train} the model was trained on: quality may drop",))
    click.echo(plan.explain(), err=True)
    click.echo(f"  Slots: {parallel} × {per_slot} tokens", err=True)
    with Engine.load(replace(plan, n_ctx=per_slot * parallel)) as engine:
        click.echo(f"  Chat format: {engine.template_origin}", err=True)
        spec, notes = serving_speculation(engine.info.plan, draft, draft_min, draft_max)
        engine.use_speculation(spec)
        for note in notes:
            click.echo(f"  Note: {note}", err=True)
        opts = ServeOptions(host, port, parallel, max_queue, alias or plan.name, api_key, tuple(cors))
        run_server(engine, plan.to_dict(), opts, sock)
    return 0
