"""A thinking model in the chat: its reasoning streams into a dimmed, collapsible block above the answer, folded
once the answer starts; only the answer goes back to the model, the reasoning is saved for display. A scripted
engine pins the layout; SmolLM2 with the Qwen3-style templates of thinking.py is the real model."""

from __future__ import annotations

import threading
from functools import partial
from types import SimpleNamespace

from test_tui import GREEDY, pilot_test, ready, reply_done, running, send, until
from thinking import reference, template_files
from textual.widgets import Collapsible, Markdown, Static

from edgellm.engine.runtime import GenStats
from edgellm.tui import worker
from edgellm.tui.app import ChatApp, LoadedModel
from edgellm.tui.backend import list_models, open_model
from edgellm.tui.chatdb import ChatDB
from edgellm.tui.state import DEFAULT_SYSTEM_PROMPT

THOUGHT, ANSWER = "Two and two: four.", "It is 4."


class ThinkingEngine:
    """Writes `<think>THOUGHT</think>` then waits for `go` before the answer, so the test sees the reply mid-way."""

    info = SimpleNamespace(name="Thinker", level="Q4_1", n_layers=30, n_gpu_layers=0, gpu_layers="0/31", n_ctx=2048, n_threads=2)

    def __init__(self) -> None:
        self.last_stats = None
        self.go = threading.Event()
        self.asked: list[list[dict]] = []

    def render_chat(self, messages, add_generation_prompt=True):
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text):
        return len(text.split())

    def stream_chat(self, messages, sampling=None, cancel=None):
        self.asked.append(messages)
        self.last_stats = GenStats(7, 0, 0.05, 800.0, 123.4, "cancelled")
        pieces = ["<th", "ink>", "Two and", " two: four.", "</think>", "\n\n", "It is", " 4."]
        for i, piece in enumerate(pieces, 1):
            if i == 7:
                assert self.go.wait(60)
            self.last_stats.gen_tokens = i
            yield piece
        self.last_stats.finish_reason = "stop"

    def close(self):
        pass


def _thinking(view) -> tuple[bool, str]:
    block = view.query_one(Collapsible)
    return block.collapsed, str(block.query_one(".thinking", Static).render())


@pilot_test
async def test_the_reasoning_folds_once_the_answer_starts(monkeypatch, tmp_path):
    monkeypatch.setattr(worker, "FRAME_S", 0.0)
    engine = ThinkingEngine()
    app = ChatApp(lambda ref, settings: LoadedModel(engine, "/models/thinker.gguf", "Q4_1", thinks=True), db_path=tmp_path / "chats.db")
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "What is 2+2?")
        await until(pilot, lambda: app.generating is not None)
        view = app.generating
        await until(pilot, lambda: len(view.query(".thinking")) and _thinking(view)[1] == THOUGHT, timeout=30)
        assert _thinking(view) == (False, THOUGHT) and view.message.content == ""  # open while the model thinks
        engine.go.set()
        await reply_done(pilot)
        assert _thinking(view) == (True, THOUGHT)
        assert view.query_one(Markdown).source == ANSWER
        message = app.conversation.messages[-1]
        assert (message.content, message.thinking, message.stats["thinking_tokens"]) == (ANSWER, THOUGHT, 5)
        assert app.history()[-1] == {"role": "assistant", "content": ANSWER}  # what goes back to the model
        await send(pilot, "And 3+3?")
        await reply_done(pilot)
        assert engine.asked[-1][-2] == {"role": "assistant", "content": ANSWER}
    saved = ChatDB(tmp_path / "chats.db").list_conversations()[0]
    reloaded = ChatDB(tmp_path / "chats.db").load(saved.id).messages
    assert [(m.content, m.thinking) for m in reloaded if m.role == "assistant"] == [(ANSWER, THOUGHT)] * 2


@pilot_test
async def test_a_real_model_thinks_in_the_block(monkeypatch, tmp_path):
    files = template_files(tmp_path)
    question = "What is 2+2?"
    reasoning, answer = reference(files["switch"], question, GREEDY["max_tokens"], system=DEFAULT_SYSTEM_PROMPT)
    app = ChatApp(partial(open_model, chat_template=files["switch"]), None, list_models, db_path=tmp_path / "chats.db", overrides=GREEDY)
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, question)
        await reply_done(pilot)
        view = app.log_view.views()[-1]
        assert (view.message.thinking, view.message.content) == (reasoning, answer) and _thinking(view) == (False, reasoning)
    reasoning, answer = reference(files["switch"], question, GREEDY["max_tokens"], think=False, system=DEFAULT_SYSTEM_PROMPT)
    app = ChatApp(partial(open_model, chat_template=files["switch"], think=False), None, list_models, db_path=tmp_path / "chats.db",
                  overrides=GREEDY)
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, question)
        await reply_done(pilot)
        view = app.log_view.views()[-1]
        assert reasoning is None and view.message.content == answer and not view.query(Collapsible)


@pilot_test
async def test_a_template_without_the_switch_says_so(tmp_path):
    app = ChatApp(partial(open_model, think=True), None, list_models, db_path=tmp_path / "chats.db", overrides=GREEDY)
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        note = "thinking cannot be switched on with this chat template (the model does not think): ignored"
        await until(pilot, lambda: note in [str(n.message) for n in app._notifications], timeout=30)
        assert app.loaded.think is None and not app.loaded.thinks
