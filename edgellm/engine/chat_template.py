"""Render a model's own chat template (the Jinja text stored in its GGUF), the way transformers does.

The environment matches transformers' `apply_chat_template`: trim_blocks/lstrip_blocks, loop controls,
`raise_exception`, a `tojson` filter that keeps non-ASCII text, and `strftime_now`.

Templates are untrusted text from a model file. Jinja's immutable sandbox keeps them from touching
anything but their arguments; a `Budget` keeps them from running forever or filling the memory: every
line of Python the render runs, every item of a `range()` and of a sequence built with `*` spends a step,
`**` may not build huge numbers, and the rendered prompt has a size limit. An honest template spends a
few hundred steps per message and milliseconds; a hostile one is stopped with one line.
"""

from __future__ import annotations

import json
import sys
import time
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache

from . import chat_formats
from ..errors import EdgeError


MAX_STEPS = 5_000_000  # lines of Python run, plus items of ranges and repeated sequences, per render
MAX_SECONDS = 10.0  # per render, for work the steps do not see (C code called from the template)
MAX_OUTPUT = 1 << 24  # characters of prompt: more text than any model's context holds
MAX_POWER_BITS = 1 << 16  # size of a number `**` may build


class Budget:
    """What one render may still spend. `trace` is a sys.settrace function that spends a step per line."""

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS

    def spend(self, steps: int) -> None:
        self.steps -= steps
        if self.steps < 0:
            _exceeded(f"more than {MAX_STEPS:,} steps")
        if time.monotonic() > self.deadline:
            _exceeded(f"more than {MAX_SECONDS:g} s")

    def trace(self, frame, event, arg):
        if event == "line":
            self.spend(1)
        return self.trace


_budget: ContextVar[Budget] = ContextVar("chat_template_budget")


def _exceeded(what: str):
    raise EdgeError(f"the model's chat template exceeded its budget ({what}): the template is broken or hostile")


def _raise(message: str):
    raise EdgeError(f"chat template: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _range(*args: int) -> range:
    from jinja2.sandbox import safe_range  # Jinja's own: at most 100000 items a call

    items = safe_range(*args)
    _budget.get().spend(len(items))
    return items


def _sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        """Operators that build a large value in one step of C code are checked before they run."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                        _budget.get().spend(len(seq) * max(times, 0))
            elif all(isinstance(v, int) for v in (left, right)) and right > 0:
                if abs(left).bit_length() * right > MAX_POWER_BITS:
                    _exceeded(f"a number of more than {MAX_POWER_BITS:,} bits")
            return super().call_binop(context, operator, left, right)

    return Sandbox


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols

    env = _sandbox()(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["range"] = _range
    env.globals.pop("lipsum", None)  # lorem ipsum of any length, in one call no budget sees into
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise EdgeError(f"the model's chat template does not parse: {exc}") from exc
    except RecursionError:
        raise EdgeError("the model's chat template does not parse: it is nested too deeply") from None


def render(
    template: str | None,
    messages: list[dict],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict] | None = None,
    variables: dict | None = None,
) -> str:
    """The prompt text for `messages` (dicts with role and content) and the `tools` (OpenAI-style function
    descriptions) the model may call. `variables` are further ones the template may read (enable_thinking)."""
    from jinja2 import TemplateError

    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise EdgeError("each chat message needs a role and a content")
    compiled = _compile(template or chat_formats.FALLBACK.source)
    budget = Budget()
    token = _budget.set(budget)
    previous = sys.gettrace()  # a debugger's or coverage's: back once the render is done
    sys.settrace(budget.trace)
    try:
        out, size = [], 0
        pieces = compiled.generate(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
            documents=None,
            **(variables or {}),
        )
        for piece in pieces:
            size += len(piece)
            if size > MAX_OUTPUT:
                _exceeded(f"a prompt of more than {MAX_OUTPUT:,} characters")
            out.append(piece)
        return "".join(out)
    except EdgeError:
        raise
    except TemplateError as exc:
        raise EdgeError(f"the model's chat template failed: {exc}") from exc
    except Exception as exc:  # untrusted code: 1/0, endless recursion, a huge string... all end here
        raise EdgeError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.settrace(previous)
        _budget.reset(token)
