"""What the chat knows apart from its widgets: settings, context fitting, code blocks.

Nothing here imports Textual, so it is easy to test and reuse.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Callable

from edgellm.engine.sampling import Sampling

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class ChatSettings:
    """The settings screen's values; stored in the chat database."""

    temperature: float = Sampling.temperature
    top_p: float = Sampling.top_p
    top_k: int = Sampling.top_k
    min_p: float = Sampling.min_p
    max_tokens: int = Sampling.max_tokens
    seed: int = -1  # -1: a new random seed for every reply
    n_ctx: int = 0  # 0: the context size the planner chose
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ChatSettings:
        """Known keys of the right type win; anything else keeps its default."""
        out = cls()
        for f in fields(cls):
            value = values.get(f.name)
            kind = type(getattr(out, f.name))
            if value is None:
                continue
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(out, f.name, float(value))
            elif isinstance(value, kind) and not isinstance(value, bool):
                setattr(out, f.name, value)
        return out

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            seed=None if self.seed < 0 else self.seed,
            max_tokens=self.max_tokens,
        )


@dataclass(frozen=True)
class Fitted:
    messages: list[dict]
    dropped: int  # how many of the oldest turns were left out
    prompt_tokens: int


class ContextFull(Exception):
    """Even the system prompt and the newest message alone do not fit."""


def fit_context(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> Fitted:
    """Drop the oldest turns until the prompt takes at most `budget` tokens.

    A leading system prompt is always kept, and so is the newest message.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while True:
        kept = system + turns[dropped:]
        used = count(kept)
        if used <= budget:
            return Fitted(kept, dropped, used)
        if dropped >= len(turns) - 1:
            raise ContextFull(f"the message needs {used} tokens, the context has room for {budget}")
        # Drop a whole user/assistant exchange where there is one, so the history stays well-formed.
        step = 2 if turns[dropped]["role"] == "user" and dropped + 2 < len(turns) else 1
        dropped += step


def reply_budget(n_ctx: int, max_tokens: int) -> int:
    """Tokens the prompt may use so that a reply of max_tokens still fits (at least half the context)."""
    return n_ctx - min(max_tokens, n_ctx // 2)


_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(markdown: str) -> list[str]:
    """The contents of the fenced code blocks in a message, in order (an unclosed last block counts)."""
    blocks = [m.group(2) for m in _FENCE.finditer(markdown)]
    tail = markdown[_last_end(markdown):]
    opened = re.search(r"^(`{3,}|~{3,})[^\n]*\n(.*)", tail, re.MULTILINE | re.DOTALL)
    if opened:
        blocks.append(opened.group(2))
    return [b.rstrip("\n") for b in blocks]


def _last_end(markdown: str) -> int:
    end = 0
    for m in _FENCE.finditer(markdown):
        end = m.end()
    return end


def title_from(text: str, width: int = 40) -> str:
    """A conversation title from its first message: one line, cut at a word."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line or "New chat"
    return line[:width].rsplit(" ", 1)[0] + "…"


@dataclass(frozen=True)
class ModelChoice:
    """One local GGUF file as the model picker shows it."""

    name: str
    level: str
    path: str
    size: int
    fits: bool
    fit: str  # the planner's verdict in a few words
