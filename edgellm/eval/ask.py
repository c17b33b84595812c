"""Exam questions and word problems asked through the model's own chat template, as a user would ask them.

- Exam: the question and its lettered choices are one user message, rendered with the engine's `render_chat`
  (generation prompt included). The prompt is evaluated once and the choices are ranked by the
  log-probability of their letter as the assistant's first token: the letter alone ("A", not " A"), because
  chat templates end the assistant's header with a newline, after which a reply starts with a bare letter.
  The letter's token is the first the vocabulary makes of it; the highest log-probability wins (the first
  on a tie).
- GSM8K: the question alone is the user message; the reply is generated greedily (the most likely token
  each step, no penalties) until the model ends its turn or `max_tokens`; the prediction is the last number
  in the reply, compared with the gold number as a number (so "1,000" and "1000.0" agree).
- A thinking model: exams are asked with its thinking switched off where the template has the switch (the
  letter must be the reply's first token); word problems as `think` says (None: the template's default), and
  only the answer after the reasoning is read for the number (a reply cut off while thinking has none).

An item with an empty question or choice, or whose prompt leaves no room in the context, is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..engine.reasoning import opened_in, split_reasoning, switchable, thinks
from ..engine.sampling import Sampling
from ..errors import EdgeError
from .exam_files import LETTERS, last_number, number
from .score import Scored, Skipped
from .tasks import Task

EXAM_INSTRUCTION = "Answer with the letter of the right choice."
GSM8K_MAX_TOKENS = 256


@dataclass(frozen=True)
class Answered:
    """A GSM8K item: what the model wrote and the number read from it."""

    number: int
    reply: str  # the answer: a thinking model's reply without its reasoning
    predicted: str | None
    correct: bool
    reasoning: str | None = None  # a thinking model's reasoning (None: it did not think)


def exam_message(task: Task) -> str:
    choices = [f"{letter}. {text}" for letter, text in zip(LETTERS, task.choices)]
    return "\n".join([task.prompt, *choices, EXAM_INSTRUCTION])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class ChatAsker:
    """Asks one loaded engine (`edgellm.engine.runtime.Engine`) the items of a file, one at a time."""

    def __init__(self, engine, max_tokens: int = GSM8K_MAX_TOKENS, think: bool | None = None) -> None:
        self.engine = engine
        self.max_tokens = max_tokens
        self.n_ctx = engine.info.n_ctx
        self.thinks = thinks(engine.chat_template)
        self.switchable = switchable(engine.chat_template)
        self.think = think

    def letter_tokens(self, n: int) -> list[int]:
        tokens = [self.engine.tokenize(letter, add_bos=False)[0] for letter in LETTERS[:n]]
        if len(set(tokens)) != n:
            raise EdgeError(f"the vocabulary of {self.engine.info.path.name} makes the same first token of "
                            f"different letters {LETTERS[:n]}: exam answers cannot be told apart")
        return tokens

    def _render(self, text: str, think: bool | None) -> str:
        return self.engine.render_chat([{"role": "user", "content": text}], think=think if self.switchable else None)

    def _prompt(self, text: str) -> list[int]:
        return self.engine.tokenize(self._render(text, False))

    def exam(self, tasks: tuple[Task, ...], on_item: Callable[[int], None] | None = None) -> Iterator[Scored | Skipped]:
        import llama_cpp

        letters = {n: self.letter_tokens(n) for n in {len(t.choices) for t in tasks}}
        for done, task in enumerate(tasks, 1):
            if not task.prompt or not all(c.strip() for c in task.choices):
                yield Skipped(task.number, "an empty question or choice")
            else:
                tokens = self._prompt(exam_message(task))
                if len(tokens) >= self.n_ctx:
                    yield Skipped(task.number, f"its prompt is {len(tokens)} tokens, the context holds {self.n_ctx}")
                else:
                    self.engine.reset()
                    self.engine.evaluate(tokens)
                    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.engine.context, -1),
                                                shape=(self.engine.n_vocab,))
                    scores = log_softmax(row)[letters[len(task.choices)]]
                    chosen = int(np.argmax(scores))
                    yield Scored(task.number, tuple(float(s) for s in scores), chosen, chosen in task.gold)
            if on_item:
                on_item(done)

    def gsm8k(self, tasks: tuple[Task, ...], on_item: Callable[[int], None] | None = None) -> Iterator[Answered | Skipped]:
        greedy = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=self.max_tokens, seed=0)
        for done, task in enumerate(tasks, 1):
            if not task.prompt:
                yield Skipped(task.number, "an empty question")
            else:
                prompt = self._render(task.prompt, self.think)
                tokens = self.engine.tokenize(prompt)
                if len(tokens) + self.max_tokens > self.n_ctx:
                    yield Skipped(task.number, f"its prompt ({len(tokens)} tokens) and {self.max_tokens} tokens of "
                                               f"reply do not fit the context's {self.n_ctx}")
                else:
                    reply = "".join(self.engine.stream_tokens(tokens, greedy))
                    reasoning, answer = split_reasoning(reply, opened_in(prompt)) if self.thinks else (None, reply)
                    got = last_number(answer)
                    yield Answered(task.number, answer, None if got is None else str(got),
                                   got is not None and got == number(task.answer), reasoning)
            if on_item:
                on_item(done)
