"""Layout snapshots of the chat UI at 80x24: main screen, settings, model picker.

A scripted engine makes the pictures deterministic (same words, same speed every run); everything the
chat does with a real model is tested against SmolLM2 in test_tui.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from edgellm.engine.runtime import GenStats
from edgellm.tui.app import ChatApp, LoadedModel
from edgellm.tui.state import ModelChoice

REPLY = "Here is one:\n\n```python\nprint(\"Hello, world!\")\n```\n\nRun it with `python hello.py`."


class ScriptedEngine:
    """The Engine chat API with a fixed reply, for pictures only."""

    info = SimpleNamespace(name="SmolLM2-135M-Instruct", level="Q4_1", n_layers=30, n_gpu_layers=0, gpu_layers="0/31", n_ctx=2048, n_threads=2)

    def __init__(self) -> None:
        self.last_stats = None

    def render_chat(self, messages, add_generation_prompt=True):
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text):
        return len(text.split())

    def stream_chat(self, messages, sampling=None, cancel=None):
        words = REPLY.split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word
        self.last_stats = GenStats(41, len(words), 0.05, 800.0, 123.4, "stop")

    def close(self):
        pass


def open_scripted(ref, settings):
    return LoadedModel(ScriptedEngine(), "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1 chosen by the planner · CPU only · ctx 2048")


CHOICES = [
    ModelChoice("SmolLM2-135M-Instruct", "Q4_1", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", 98_000_000, True, "fits: CPU only, ctx 8192"),
    ModelChoice("Llama-3.1-8B-Instruct", "Q8_0", "/models/llama/Llama-3.1-8B-Q8_0.gguf", 8_540_000_000, False, "needs 9.1 GiB, 6.0 GiB free"),
    ModelChoice("Llama-3.1-8B-Instruct", "Q4_K_M", "/models/llama/Llama-3.1-8B-Q4_K_M.gguf", 4_920_000_000, True, "fits: CPU only, ctx 4096"),
]


def make_app(tmp_path) -> ChatApp:
    return ChatApp(open_scripted, list_models=lambda: CHOICES, db_path=tmp_path / "chats.sqlite3")


async def wait_ready(pilot) -> None:
    while pilot.app.engine is None:
        await pilot.pause(0.05)


async def chat_once(pilot) -> None:
    await wait_ready(pilot)
    await pilot.press(*"Write hello world in Python", "enter")
    while pilot.app.generating is not None or len(pilot.app.conversation.messages) < 2:
        await pilot.pause(0.05)
    await pilot.pause(0.2)


def test_main_screen(snap_compare, tmp_path):
    assert snap_compare(make_app(tmp_path), terminal_size=(80, 24), run_before=chat_once)


def test_settings_screen(snap_compare, tmp_path):
    async def open_settings(pilot):
        await wait_ready(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)

    assert snap_compare(make_app(tmp_path), terminal_size=(80, 24), run_before=open_settings)


def test_model_picker(snap_compare, tmp_path):
    async def open_picker(pilot):
        await wait_ready(pilot)
        await pilot.press("ctrl+o")
        while not pilot.app.screen.choices:
            await pilot.pause(0.05)
        await pilot.pause(0.2)

    assert snap_compare(make_app(tmp_path), terminal_size=(80, 24), run_before=open_picker)
