"""`edgellm serve`: OpenAI's, Ollama's and Anthropic's HTTP APIs over one model or the whole store, for editors,
Open WebUI, agents and scripts.

The planner sizes the KV cache for every slot (`--parallel` × `--ctx` tokens); the plan is printed at
start and served at /v1/models. Only the loopback address is served unless an API key (or --insecure)
says otherwise.
"""

from __future__ import annotations

import ipaddress

import click

from .options import (
    CHAT_TEMPLATE, CHAT_TEMPLATE_HELP, DEVICE_HELP, DEVICES, GPU_LAYERS, LORA, LORA_HELP, MIN_SPEED, MIN_SPEED_HELP, THINK_HELP, THREADS, WORKERS,
    WORKERS_HELP, draft_options,
)

CTX_STEP = 256  # llama.cpp rounds each sequence's share of the context up to this (as the server does)


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        from ..serve.ollama_requests import duration_seconds

        seconds = duration_seconds(value)
        if seconds is None:
            self.fail(f"{value!r} is not a duration: try 5m, 30s, 1h, 0 or -1", param, ctx)
        return seconds if seconds >= 0 else float("inf")


KEEP_ALIVE = _Duration()


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
@click.option("--keep-alive", type=KEEP_ALIVE, default="5m", show_default=True,
              help="Serving the store: unload a model idle this long (0: after each reply; -1: never).")
@click.option("--ram", help="Serving the store: the RAM its models may take together (e.g. 8G; default: what is free at start).")
@click.option("--think/--no-think", default=None, help=THINK_HELP + " A request's chat_template_kwargs.enable_thinking or "
              "reasoning_effort wins.")
@click.option("--mmproj", type=click.Path(dir_okay=False), help="A vision model's projector GGUF: requests may hold images "
              "(default: the package's own).")
@click.option("--allow-image-urls", is_flag=True, help="Fetch images that requests name by http(s) URL (never from loopback, "
              "private or link-local addresses; 20 MiB, 10 s, 3 redirects at most). Off: images come as base64 data.")
@draft_options
def serve(model, host, port, parallel, ctx, max_queue, api_key, alias, threads, insecure, chat_template, min_speed, cors, ngl, devices, rpc,
          loras, keep_alive, ram, think, mmproj, allow_image_urls, draft, draft_max, draft_min) -> int:
    """Serve MODEL (a .gguf file, package folder or store name) over OpenAI's API at http://HOST:PORT/v1, with
    Ollama's (/api/...) and Anthropic's (/v1/messages) on the same port.

    Without MODEL, every model in the store is served: a request's model name loads that model (planned for
    the memory the loaded ones leave; the least recently used idle one is unloaded when the next does not
    fit), and a model idle for --keep-alive is unloaded.

    A Hugging Face or ModelScope repo id is pulled first: the level the planner picks for this machine (from
    a checkpoint: converted and quantized to that level only), kept in the store.
    """
    from ..engine.draft import check_lengths, serving_notes
    from ..engine.embedding import rank_notes
    from ..errors import UsageError
    from ..plan.hardware import parse_size
    from ..serve.loading import LoadOptions, load, options_for, plan_slots
    from ..serve.server import bind, serve as run_server, serve_store
    from ..store import store
    from ..engine.launch import with_projector
    from .hubref import local_model

    if not _is_loopback(host) and not api_key and not insecure:
        raise UsageError(f"--host {host} lets other machines reach the API: give --api-key KEY, or --insecure to serve it without one")
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    check_lengths(draft_min, draft_max)
    opts = LoadOptions(parallel, ctx, max_queue, ngl, devices, threads, chat_template, min_speed, rpc, tuple(loras), api_key,
                       draft, draft_min, draft_max, think, allow_image_urls)
    sock = bind(host, port)  # before loading: a port in use fails fast
    if model is None:
        for name, given in (("--alias", alias), ("--lora", loras), ("--mmproj", mmproj)):
            if given:
                raise UsageError(f"{name} applies to one model: give MODEL, or leave {name} out to serve the store")
        if not store.names():
            raise UsageError("the store holds no models: give MODEL (a .gguf file, package folder or hub id), or put models in the store "
                             "(edgellm import PATH, edgellm pull REPO)")
        serve_store(opts, keep_alive, parse_size(ram) if ram else None, sock, tuple(cors))
        return 0
    if ram:
        raise UsageError("--ram budgets the store's models: leave it out with MODEL (the planner uses what is free)")
    ref = with_projector(local_model(model, min_speed, rpc), mmproj, images=False)  # a hub id: pulled (converted, quantized) first
    opts = options_for(ref, opts)
    plan, per_slot = plan_slots(ref, opts)
    click.echo(plan.explain(), err=True)
    click.echo(f"  Slots: {opts.parallel} × {per_slot} tokens", err=True)
    with load(plan, per_slot, opts, ref.projector) as engine:
        click.echo("  A reranker: it scores documents against a query (POST /v1/rerank), and does not chat" if opts.ranks
                   else f"  Chat format: {engine.template_origin}", err=True)
        for note in rank_notes(next(f.info for f in ref.files if f.path == plan.path)) if opts.ranks else ():
            click.echo(f"  Note: {note}", err=True)
        for note in serving_notes(plan, draft):  # load() applied and checked it
            click.echo(f"  Note: {note}", err=True)
        run_server(engine, plan, opts, alias or plan.name, sock, tuple(cors))
    return 0
