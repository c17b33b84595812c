"""Keys and what the status line means."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# edgellm chat

Type a message and press **Enter**. The reply streams in; **Esc** (or **Ctrl+C**) stops it and
keeps what was written, marked *[stopped]*.

| Key | Does |
|---|---|
| Enter | send |
| Esc / Ctrl+C | stop the reply |
| Ctrl+R | regenerate the last reply |
| Ctrl+E | edit your last message and resend it |
| Ctrl+N | new chat |
| Ctrl+B | show or hide the saved chats (Enter open, r rename, d delete) |
| Ctrl+Y | copy the last reply |
| Ctrl+S | settings: sampling, context size, system prompt |
| Ctrl+O | pick a model (each level's fit on this machine) |
| Ctrl+P | command palette |
| Tab / Shift+Tab | move between messages: c copy, k copy the next code block, e edit & resend |
| F1 | this help |
| Ctrl+Q | quit |

The line above the keys shows the speed of the last reply (generated tokens per second), how much of
the context the conversation uses, the quant level and how many layers run on the GPU. When the
conversation no longer fits, the oldest turns are left out of what the model sees (the system prompt is
always kept) and the line says so.

Chats are saved in SQLite under edgellm's data folder (`EDGELLM_HOME` moves it). If that database
cannot be used, the chat goes on in memory and says so.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="help"):
            yield Markdown(HELP)
