"""The list of saved conversations: open, rename, delete."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message as TextualMessage
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from ..chatdb import ConversationSummary


class ConversationList(OptionList):
    BINDINGS = [
        Binding("d,delete", "delete", "Delete"),
        Binding("r", "rename", "Rename"),
    ]

    def _highlighted_id(self) -> int | None:
        if self.highlighted is None:
            return None
        return int(self.get_option_at_index(self.highlighted).id)

    def action_delete(self) -> None:
        if (conv_id := self._highlighted_id()) is not None:
            self.post_message(Sidebar.Delete(conv_id))

    def action_rename(self) -> None:
        if (conv_id := self._highlighted_id()) is not None:
            title = str(self.get_option_at_index(self.highlighted).prompt)
            self.post_message(Sidebar.Rename(conv_id, title))


class Sidebar(Vertical):
    """Saved conversations, newest first; the open one is marked."""

    class Open(TextualMessage):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class Delete(Open):
        pass

    class Rename(TextualMessage):
        def __init__(self, conversation_id: int, title: str) -> None:
            super().__init__()
            self.conversation_id = conversation_id
            self.title = title

    def compose(self) -> ComposeResult:
        yield Label("Chats", classes="sidebar-title")
        yield ConversationList(id="conversations")

    def show(self, summaries: list[ConversationSummary], current: int | None) -> None:
        options = self.query_one(ConversationList)
        keep = options.highlighted
        options.clear_options()
        options.add_options([Option(s.title, id=str(s.id)) for s in summaries])
        ids = [s.id for s in summaries]
        if current in ids:
            options.highlighted = ids.index(current)
        elif keep is not None and summaries:
            options.highlighted = min(keep, len(summaries) - 1)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.Open(int(event.option.id)))
