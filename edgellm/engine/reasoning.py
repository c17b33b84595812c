"""A thinking model's reply split into its reasoning and its answer: the `<think>…</think>` block that Qwen3,
DeepSeek-R1 and other templates teach comes first in the reply (or, where the template opens it in the prompt,
the reply starts inside it). Text arrives in pieces: a tag split across two pieces is held back until the next
shows what it is, so what is sent never has to be taken back.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"
REASONING, CONTENT = "reasoning", "content"
SWITCH = "enable_thinking"  # the variable Qwen3-style templates read to think or answer at once


def thinks(template: str | None) -> bool:
    """Whether a chat template teaches the model to think first."""
    return bool(template) and CLOSE in template


def switchable(template: str | None) -> bool:
    """Whether a chat template lets the caller switch the thinking on or off (through `SWITCH`)."""
    return bool(template) and SWITCH in template


def switch_note(template: str | None, think: bool | None) -> str | None:
    """One line for a caller that asked to switch the thinking where the template has no switch (None: nothing to say)."""
    if think is None or switchable(template):
        return None
    why = "it does not read enable_thinking" if thinks(template) else "the model does not think"
    return f"thinking cannot be switched {'on' if think else 'off'} with this chat template ({why}): ignored"


def opened_in(prompt: str) -> bool:
    """Whether the prompt itself opens the thinking (the reply then starts inside it)."""
    return prompt.rstrip().endswith(OPEN)


@dataclass
class Part:
    kind: str  # REASONING or CONTENT
    text: str


def _held_tail(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (held until the next piece)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    def __init__(self, inside: bool = False):
        self._state = REASONING if inside else "start"  # start: nothing but white space seen yet
        self._held = ""
        self._trim = inside  # drop the white space that follows a tag
        self.thought = inside  # whether the reply has a reasoning part (an empty one too)

    @property
    def answering(self) -> bool:
        """Whether the answer has started."""
        return self._state == CONTENT

    def push(self, text: str) -> list[Part]:
        """The parts `text` completes, in order (reasoning, then content)."""
        out: list[Part] = []
        text = self._held + text
        self._held = ""
        while text:
            if self._trim:
                text = text.lstrip()
                if not text:
                    break
                self._trim = False
            if self._state == "start":
                lead = text.lstrip()
                if lead.startswith(OPEN):
                    self._state, self._trim, self.thought = REASONING, True, True
                    text = lead[len(OPEN):]
                elif OPEN.startswith(lead):  # white space, or the start of the tag: wait for more
                    self._held = text
                    break
                else:
                    self._state = CONTENT
            elif self._state == REASONING:
                at = text.find(CLOSE)
                if at >= 0:
                    self._emit(out, REASONING, text[:at])
                    self._state, self._trim = CONTENT, True
                    text = text[at + len(CLOSE):]
                else:
                    keep = _held_tail(text, CLOSE)
                    self._emit(out, REASONING, text[: len(text) - keep])
                    self._held = text[len(text) - keep:]
                    break
            else:
                self._emit(out, CONTENT, text)
                break
        return out

    def flush(self) -> list[Part]:
        """What is still held when the reply ends: a tag that never completed is text of the part it is in."""
        held, self._held = self._held, ""
        return [Part(REASONING if self._state == REASONING else CONTENT, held)] if held else []

    @staticmethod
    def _emit(out: list[Part], kind: str, text: str) -> None:
        if text:
            out.append(Part(kind, text))


class Reply:
    """A streamed reply kept as its reasoning and its answer, counting the pieces (one per generated token)
    that arrived before the answer started: a thinking model's reasoning with its tags."""

    def __init__(self, inside: bool = False):
        self.splitter = ReasoningSplitter(inside)
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self._before_answer = 0

    def push(self, piece: str) -> list[Part]:
        if not self.splitter.answering:  # the piece that closes the reasoning counts too
            self._before_answer += 1
        return self._keep(self.splitter.push(piece))

    @property
    def thinking_pieces(self) -> int:
        return self._before_answer if self.splitter.thought else 0

    def flush(self) -> list[Part]:
        return self._keep(self.splitter.flush())

    def _keep(self, parts: list[Part]) -> list[Part]:
        for p in parts:
            (self.reasoning if p.kind == REASONING else self.answer).append(p.text)
        return parts

    def split(self) -> tuple[str | None, str]:
        """(the reasoning, None if the reply had none; the answer) so far."""
        return ("".join(self.reasoning) if self.splitter.thought else None), "".join(self.answer)


def split_reasoning(text: str, inside: bool = False) -> tuple[str | None, str]:
    """A whole reply as (its reasoning, None if it has none; its answer)."""
    s = ReasoningSplitter(inside)
    parts = s.push(text) + s.flush()
    reasoning = "".join(p.text for p in parts if p.kind == REASONING)
    content = "".join(p.text for p in parts if p.kind == CONTENT)
    return (reasoning if s.thought else None), content
