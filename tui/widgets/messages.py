"""The conversation: one focusable widget per message, replies streamed into a Markdown document (a thinking
model's reasoning into a dimmed, collapsible block above it, folded once the answer starts)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TextualMessage
from textual.widgets import Collapsible, Label, Markdown, Static

from ..chatdb import Message

from ..state import code_blocks

ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}


class MessageView(Vertical, can_focus=True):
    """One message. An assistant reply grows through `Chunk` messages until `Finished`."""

    BINDINGS = [
        Binding("c", "copy", "Copy"),
        Binding("k", "copy_code", "Copy code"),
        Binding("e", "edit", "Edit & resend"),
    ]

    class Chunk(TextualMessage):
        """Text the model produced since the last chunk (posted from the generation thread): answer, or `thinking`."""

        def __init__(self, text: str, thinking: bool = False) -> None:
            super().__init__()
            self.text = text
            self.thinking = thinking

    class Finished(TextualMessage):
        """The reply ended; bubbles to the app once the view has drawn all of it."""

        def __init__(self, text: str, stats=None, error: str | None = None) -> None:
            super().__init__()
            self.text = text
            self.stats = stats
            self.error = error

    class EditRequested(TextualMessage):
        def __init__(self, view: MessageView) -> None:
            super().__init__()
            self.view = view

    def __init__(self, message: Message) -> None:
        super().__init__(classes=f"message -{message.role}")
        self.message = message
        self._stream = None
        self._code_index = 0

    def compose(self) -> ComposeResult:
        yield Label(self._title(), classes="role", markup=False)
        if self.message.images:
            with Horizontal(classes="chips"):
                for path in self.message.images:
                    yield Label(f"▣ {Path(path).name}", classes="chip", markup=False)
        if self.message.thinking:
            yield self._thinking_block(collapsed=True)
        yield Markdown(self.message.content)

    def _thinking_block(self, collapsed: bool) -> Collapsible:
        return Collapsible(Static(self.message.thinking, markup=False, classes="thinking"), title="Thinking", collapsed=collapsed)

    def _title(self) -> str:
        title = ROLE_TITLES.get(self.message.role, self.message.role)
        if self.message.stopped:
            title += "  [stopped]"
        return title

    def mark(self, note: str) -> None:
        self.query_one(".role", Label).update(f"{self._title()}  {note}".rstrip())

    async def on_message_view_chunk(self, event: Chunk) -> None:
        event.stop()
        blocks = self.query(Collapsible)
        if event.thinking:
            self.message.thinking += event.text
            if blocks:
                blocks.first().query_one(".thinking", Static).update(self.message.thinking)
            else:
                await self.mount(self._thinking_block(collapsed=False), before=self.query_one(Markdown))
            return
        if blocks and not blocks.first().collapsed:  # the answer has started: fold the reasoning away
            blocks.first().collapsed = True
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one(Markdown))
        self.message.content += event.text
        await self._stream.write(event.text)

    async def on_message_view_finished(self, event: Finished) -> None:
        # Let the stream draw what it holds before the app sees the end of the reply.
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if event.text != self.message.content:
            self.message.content = event.text
            await self.query_one(Markdown).update(event.text)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.message.content)
        self.notify("Message copied")

    def action_copy_code(self) -> None:
        blocks = code_blocks(self.message.content)
        if not blocks:
            self.notify("No code block in this message", severity="warning")
            return
        # Each press copies the next block.
        block = blocks[self._code_index % len(blocks)]
        self.app.copy_to_clipboard(block)
        self.notify(f"Code block {self._code_index % len(blocks) + 1}/{len(blocks)} copied")
        self._code_index += 1

    def action_edit(self) -> None:
        if self.message.role != "user":
            self.notify("Only your own messages can be edited", severity="warning")
            return
        self.post_message(self.EditRequested(self))


class ChatLog(VerticalScroll):
    """The scrolling list of messages; stays at the bottom while a reply grows unless you scroll up."""

    def on_mount(self) -> None:
        self.anchor()

    async def show(self, messages: list[Message]) -> None:
        await self.remove_children()
        await self.mount_all([MessageView(m) for m in messages if m.role != "system"])
        self.anchor()

    async def add(self, message: Message) -> MessageView:
        view = MessageView(message)
        await self.mount(view)
        self.anchor()
        return view

    def views(self) -> list[MessageView]:
        return list(self.query(MessageView))
