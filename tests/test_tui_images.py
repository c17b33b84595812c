"""Images in the chat UI with the tiny Gemma 3 vision model: a path typed or dropped (quoted, escaped, file://) or
/image PATH attaches the file, shown as a chip in the message; the reply follows the picture; a text-only model
refuses the attachment and keeps the typed text."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from PIL import Image
from textual.widgets import Label

from edgellm.engine.runtime import Engine
from edgellm.engine.images import read_image
from edgellm.engine.launch import plan_model
from edgellm.engine.vision import with_images
from edgellm.tui.app import ChatApp
from edgellm.tui.attachments import split_images
from edgellm.tui.backend import list_models, open_model
from test_tui import GREEDY, last_view, pilot_test, ready, reply_done, running, send
from vision_fixtures import llamacpp_vision_reference


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("chat pictures")  # a space in the folder, as dropped paths often have
    red, stripes = d / "red.png", d / "stripes.jpg"
    Image.new("RGB", (80, 60), (220, 30, 30)).save(red)
    Image.effect_mandelbrot((90, 70), (-2, -1.5, 1, 1.5), 40).convert("RGB").save(stripes)
    return {"red": red, "stripes": stripes}


def test_paths_in_a_message_are_found_however_the_terminal_pastes_them(pictures):
    red = pictures["red"]
    escaped = str(red).replace(" ", "\\ ")
    for text in (f"'{red}' what is this?", f"{escaped} what is this?", f"file://{str(red).replace(' ', '%20')} what is this?"):
        assert split_images(text) == ("what is this?", [red]), text
    assert split_images(f"/image {red}") == ("", [red])
    assert split_images("it's a red.png, no file") == ("it's a red.png, no file", [])  # no such file: plain text
    assert split_images(f'say "two words" about {escaped}') == ('say "two words" about', [red])  # its own quotes kept


def vision_app() -> ChatApp:
    text, mmproj = llamacpp_vision_reference()
    opener = partial(open_model, projectors={str(text): str(mmproj)})
    return ChatApp(opener, str(text), list_models, overrides={**GREEDY, "max_tokens": 6}, db_path=":memory:")


def expected_reply(app: ChatApp, picture: Path, question: str) -> str:
    """What the runtime answers for the same chat, outside the UI."""
    text, mmproj = llamacpp_vision_reference()
    with Engine.load(plan_model(text, threads=1), projector=mmproj) as e:
        messages = [{"role": "system", "content": app.settings.system_prompt}, {"role": "user", "content": with_images(question, 1)}]
        return "".join(e.stream_chat(messages, app.settings.sampling(), images=[read_image(picture)]))


@pilot_test
async def test_a_dropped_image_shows_as_a_chip_and_the_reply_follows_it(pictures):
    app = vision_app()
    async with running(app, size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, f"'{pictures['red']}' What is this?")
        await reply_done(pilot)
        user = app.conversation.messages[-2]
        assert user.content == "What is this?" and user.images == (str(pictures["red"]),)
        views = app.log_view.views()
        chips = [str(c.render()) for c in views[-2].query(".chip").results(Label)]
        assert chips == ["▣ red.png"]
        first = last_view(app).message.content
        assert first == expected_reply(app, pictures["red"], "What is this?")

        await app.action_new_chat()
        await send(pilot, f"/image {pictures['stripes']}")  # waits above the box for the question
        assert app.pending_images == [str(pictures["stripes"])] and app.query_one("#attachments").display
        assert not app.conversation.messages
        await send(pilot, "What is this?")
        await reply_done(pilot)
        assert not app.query_one("#attachments").display
        assert app.conversation.messages[-2].images == (str(pictures["stripes"]),)
        assert last_view(app).message.content == expected_reply(app, pictures["stripes"], "What is this?") != first


@pilot_test
async def test_a_text_only_model_refuses_the_image_and_keeps_the_text(pictures):
    app = ChatApp(open_model, None, list_models, overrides=GREEDY, db_path=":memory:")
    async with running(app) as pilot:
        await ready(pilot)
        typed = f"'{pictures['red']}' What is this?"
        app.composer.value = typed
        await app.composer.action_submit()
        await pilot.pause(0.1)
        assert app.composer.value == typed and not app.conversation.messages
        assert any("takes no images" in str(n.message) for n in app._notifications)


@pilot_test
async def test_a_file_that_is_no_image_is_not_attached(pictures, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    app = vision_app()
    async with running(app) as pilot:
        await ready(pilot)
        app.composer.value = f"{fake} what?"
        await app.composer.action_submit()
        await pilot.pause(0.1)
        assert app.composer.value == f"{fake} what?" and not app.pending_images
        assert any("not an image edgellm reads" in str(n.message) for n in app._notifications)
