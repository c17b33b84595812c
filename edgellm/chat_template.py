"""Render a model's own chat template (the Jinja text stored in its GGUF), the way transformers does.

Templates are untrusted text from a model file, so they run in Jinja's immutable sandbox. The environment
matches transformers' `apply_chat_template`: trim_blocks/lstrip_blocks, loop controls, `raise_exception`,
a `tojson` filter that keeps non-ASCII text, and `strftime_now`.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from .errors import EdgeError

# Used when a GGUF carries no template: ChatML, which most small instruct models were trained on.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise(message: str):
    raise EdgeError(f"chat template: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise EdgeError(f"the model's chat template does not parse: {exc}") from exc


def render(
    template: str | None,
    messages: list[dict],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict] | None = None,
) -> str:
    """The prompt text for `messages` (dicts with role and content) and the `tools` (OpenAI-style function
    descriptions) the model may call."""
    from jinja2 import TemplateError

    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise EdgeError("each chat message needs a role and a content")
    try:
        return _compile(template or CHATML).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
            documents=None,
        )
    except TemplateError as exc:
        raise EdgeError(f"the model's chat template failed: {exc}") from exc
