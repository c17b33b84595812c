"""A thinking model's reply split into its reasoning and its answer. Two formats: the `<think>…</think>` block
that Qwen3, DeepSeek-R1 and other templates teach comes first in the reply (or, where the template opens it in
the prompt, the reply starts inside it); harmony's (GPT-OSS) analysis channel comes first as a message of its own,
then the final channel's message is the answer. Text arrives in pieces: a tag split across two pieces is held back
until the next shows what it is, so what is sent never has to be taken back.
"""

from __future__ import annotations

from dataclasses import dataclass

REASONING, CONTENT = "reasoning", "content"
SWITCH = "enable_thinking"  # the variable Qwen3-style templates read to think or answer at once
EFFORT = "reasoning_effort"  # the one harmony templates read: how long the analysis runs ("low", "medium", "high")
# --think / --no-think as a reasoning effort: harmony models always analyse; "low" is the shortest they are taught
EFFORTS = {True: "high", False: "low"}
TAUGHT_EFFORTS = ("low", "medium", "high")


@dataclass(frozen=True)
class Tags:
    """How one format marks the reasoning: what opens and closes it, and headers that open the answer (dropped)."""

    open: str
    close: str
    answer: tuple[str, ...] = ()


THINK = Tags("<think>", "</think>")
HARMONY = Tags("<|channel|>analysis<|message|>", "<|end|>", ("<|start|>assistant<|channel|>final<|message|>", "<|channel|>final<|message|>"))
FORMATS = (THINK, HARMONY)
OPEN, CLOSE = THINK.open, THINK.close


def thinks(template: str | None) -> bool:
    """Whether a chat template teaches the model to think first."""
    return bool(template) and (THINK.close in template or HARMONY.open in template)


def switchable(template: str | None) -> bool:
    """Whether a chat template lets the caller switch the thinking on or off (through `SWITCH` or `EFFORT`)."""
    return bool(template) and (SWITCH in template or EFFORT in template)


def switch_variables(template: str | None, think: bool | str | None) -> dict | None:
    """The template variables that switch the thinking as asked: on or off, or an effort ("low", "medium", "high";
    any effort turns an on/off switch on). None: the template's default."""
    if think is None:
        return None
    if template and EFFORT in template and SWITCH not in template:
        effort = think if isinstance(think, str) else EFFORTS[think]
        return {EFFORT: effort if effort in TAUGHT_EFFORTS else "low"}  # "minimal" and "none": the least taught
    return {SWITCH: bool(think)}


def switch_note(template: str | None, think: bool | None) -> str | None:
    """One line for a caller that asked to switch the thinking where the template has no switch (None: nothing to say)."""
    if think is None or switchable(template):
        return None
    why = "it does not read enable_thinking" if thinks(template) else "the model does not think"
    return f"thinking cannot be switched {'on' if think else 'off'} with this chat template ({why}): ignored"


def opened_in(prompt: str) -> str:
    """The tag with which the prompt itself opens the thinking (the reply then starts inside it); "" if none."""
    end = prompt.rstrip()
    return next((t.open for t in FORMATS if end.endswith(t.open)), "")


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


def _tags_opened(inside: bool | str) -> Tags | None:
    if not inside:
        return None
    return next((t for t in FORMATS if t.open == inside), THINK)


class ReasoningSplitter:
    """`inside`: the prompt opened the thinking (True: with `<think>`; or the opening tag, as `opened_in` gives it)."""

    def __init__(self, inside: bool | str = False):
        self._tags = _tags_opened(inside)
        self._state = REASONING if inside else "start"  # start: nothing but white space seen yet
        self._held = ""
        self._trim = bool(inside)  # drop the white space that follows a tag
        self.thought = bool(inside)  # whether the reply has a reasoning part (an empty one too)

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
                opened = next((t for t in FORMATS if lead.startswith(t.open)), None)
                header = next((h for t in FORMATS for h in t.answer if lead.startswith(h)), None)
                if opened:
                    self._tags, self._state, self._trim, self.thought = opened, REASONING, True, True
                    text = lead[len(opened.open):]
                elif header:  # an answer without reasoning before it
                    self._state, self._trim = CONTENT, True
                    text = lead[len(header):]
                elif any(tag.startswith(lead) for t in FORMATS for tag in (t.open, *t.answer)):  # white space, or a tag's start
                    self._held = text
                    break
                else:
                    self._state = CONTENT
            elif self._state == REASONING:
                assert self._tags is not None
                close = self._tags.close
                at = text.find(close)
                if at >= 0:
                    self._emit(out, REASONING, text[:at])
                    self._state, self._trim = ("header" if self._tags.answer else CONTENT), True
                    text = text[at + len(close):]
                else:
                    keep = _held_tail(text, close)
                    self._emit(out, REASONING, text[: len(text) - keep])
                    self._held = text[len(text) - keep:]
                    break
            elif self._state == "header":  # after the reasoning: the answer's header, dropped
                assert self._tags is not None
                header = next((h for h in self._tags.answer if text.startswith(h)), None)
                if header:
                    self._state, self._trim = CONTENT, True
                    text = text[len(header):]
                elif any(h.startswith(text) for h in self._tags.answer):
                    self._held = text
                    break
                else:
                    self._state = CONTENT
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

    def __init__(self, inside: bool | str = False):
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


def split_reasoning(text: str, inside: bool | str = False) -> tuple[str | None, str]:
    """A whole reply as (its reasoning, None if it has none; its answer)."""
    s = ReasoningSplitter(inside)
    parts = s.push(text) + s.flush()
    reasoning = "".join(p.text for p in parts if p.kind == REASONING)
    content = "".join(p.text for p in parts if p.kind == CONTENT)
    return (reasoning if s.thought else None), content
