"""The chat flow: a message sent, its reply as it streams and when it ends, stopping, regenerating and editing,
and the saved conversations in the sidebar.

Mixed into ChatApp: the shell owns the widgets, the database and the engine; this is what happens to the
conversation. The reply itself is written by the engine worker (`worker.EngineWorker.generate`).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, is_dataclass
from pathlib import Path

from textual.actions import SkipAction
from textual.widgets import Input

from .attachments import split_images
from .chatdb import ChatDBError, Conversation, Message
from .screens.prompt import PromptScreen
from .widgets.messages import MessageView
from .widgets.sidebar import Sidebar
from .worker import ContextTrimmed, ThreadsChanged

FINISH_NOTES = {"length": "[max tokens]", "context": "[context full]"}


class ChatFlow:
    """Sending, replies and saved conversations, for ChatApp."""

    # ----- sending and replies

    def busy(self, doing: str) -> bool:
        """True (and says why) when a reply is being written or no model is loaded."""
        if self.generating is not None:
            self.notify(f"Stop the reply first (Esc) to {doing}.", severity="warning")
            return True
        if self.engine is None:
            self.notify(f"No model loaded yet; cannot {doing}.", severity="warning")
            return True
        return False

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "composer":
            return
        text = event.value.strip()
        if not text or self.busy("send"):
            return  # the typed text stays in the box
        text, files = split_images(text)
        if files and not self.attach(files):
            return  # the typed text stays in the box
        event.input.value = ""
        if not text:  # only images: they wait for the question
            return
        message = Message("user", text, images=tuple(str(p) for p in self.pending_images))
        self.pending_images = []
        self.show_pending()
        self.conversation.messages.append(message)
        await self.log_view.add(message)
        self.persist()
        await self.start_reply()

    def attach(self, files: list) -> bool:
        """Decode image files for the next message (shown as chips above the box); False, and why, when one cannot be."""
        from edgellm.engine.images import read_image
        from edgellm.errors import EdgeError

        if getattr(self.engine, "vision", None) is None:
            self.notify("This model takes no images: it has no projector (start the chat with --mmproj FILE).", severity="error")
            return False
        try:
            for f in files:
                self.pictures[str(f)] = read_image(f)
        except EdgeError as exc:
            self.notify(str(exc), title="Not attached", severity="error")
            return False
        self.pending_images += [str(f) for f in files]
        self.show_pending()
        return True

    def show_pending(self) -> None:
        bar = self.query_one("#attachments")
        bar.update("  ".join(f"[{Path(p).name}]" for p in self.pending_images) + "  (type your message)")
        bar.display = bool(self.pending_images)

    def history(self) -> list[dict]:
        """The messages for the model; one with images holds their places in its text and their files under "images"."""
        conv = self.conversation
        system = [{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else []
        return system + [m.as_chat() | ({"images": list(m.images)} if m.images else {}) for m in conv.messages]

    async def start_reply(self) -> None:
        view = await self.log_view.add(Message("assistant", ""))
        self.generating = view
        self.cancel = threading.Event()
        self.idle.clear()
        self.set_stats(state="generating…", note="")
        self.generate(view, self.history(), self.settings, self.cancel)

    def on_threads_changed(self, event: ThreadsChanged) -> None:
        self.set_stats(threads=event.threads)

    def on_context_trimmed(self, event: ContextTrimmed) -> None:
        note = f"context full: {event.dropped} oldest messages left out, system prompt kept"
        self.set_stats(note=note)
        self.notify(note.capitalize(), severity="warning")

    async def on_message_view_finished(self, event: MessageView.Finished) -> None:
        view = self.generating
        self.generating = None
        if view is None:
            return
        message = view.message
        stats = event.stats
        if event.error:
            self.notify(event.error, title="Generation failed", severity="error", timeout=10)
        if stats is not None:
            message.stats = asdict(stats) if is_dataclass(stats) else dict(stats)
            message.stopped = stats.finish_reason == "cancelled"
            view.mark(FINISH_NOTES.get(stats.finish_reason, ""))
            self.set_stats(
                state="stopped" if message.stopped else "ready",
                tok_s=stats.gen_tps,
                ctx_used=stats.prompt_tokens + stats.gen_tokens,
                threads=getattr(stats, "n_threads", 0),
            )
        else:
            message.stopped = True
            view.mark("[failed]" if not message.content else "")
            self.set_stats(state="ready")
        if message.content or message.thinking or message.stopped:
            self.conversation.messages.append(message)
            self.persist()
        else:
            await view.remove()

    # ----- stopping, regenerating, editing

    def action_stop(self) -> None:
        if self.generating is not None:
            self.cancel.set()
            self.set_stats(state="stopping…")
        elif self.focused is not self.composer:
            self.composer.focus()

    def action_interrupt(self) -> None:
        """Ctrl+C stops a reply; otherwise it does what it does elsewhere (copy, or a hint how to quit)."""
        if self.generating is None:
            raise SkipAction()
        self.action_stop()
        self.notify("Reply stopped. Ctrl+Q quits.")

    async def action_new_chat(self) -> None:
        if self.generating is not None:
            self.notify("Stop the reply first (Esc) to start a new chat.", severity="warning")
            return
        self.conversation = Conversation(system_prompt=self.settings.system_prompt)
        self.pending_images = []
        self.show_pending()
        await self.log_view.show([])
        self.set_stats(ctx_used=0, note="")
        self.refresh_sidebar()
        self.composer.focus()

    async def action_regenerate(self) -> None:
        if self.busy("regenerate"):
            return
        messages = self.conversation.messages
        if not messages or messages[-1].role != "assistant":
            self.notify("There is no reply to regenerate.", severity="warning")
            return
        messages.pop()
        await self.log_view.views()[-1].remove()
        await self.start_reply()

    async def action_edit_last(self) -> None:
        views = [v for v in self.log_view.views() if v.message.role == "user"]
        if not views:
            self.notify("There is no message to edit.", severity="warning")
            return
        await self.edit(views[-1])

    async def on_message_view_edit_requested(self, event: MessageView.EditRequested) -> None:
        await self.edit(event.view)

    async def edit(self, view: MessageView) -> None:
        """Put a message back in the composer and drop it and everything after it."""
        if self.generating is not None:
            self.notify("Stop the reply first (Esc) to edit.", severity="warning")
            return
        if self.composer.value.strip():
            self.notify("The message box is not empty; send or clear it first.", severity="warning")
            return
        messages = self.conversation.messages
        index = next(i for i, m in enumerate(messages) if m is view.message)
        del messages[index:]
        views = self.log_view.views()
        for later in views[views.index(view):]:
            await later.remove()
        self.composer.value = view.message.content
        self.composer.focus()
        self.persist()

    def action_copy_reply(self) -> None:
        replies = [m for m in self.conversation.messages if m.role == "assistant"]
        if not replies:
            self.notify("There is no reply to copy.", severity="warning")
            return
        self.copy_to_clipboard(replies[-1].content)
        self.notify("Reply copied")

    # ----- saved conversations

    async def on_sidebar_open(self, event: Sidebar.Open) -> None:
        if self.generating is not None:
            self.notify("Stop the reply first (Esc) to open another chat.", severity="warning")
            return
        try:
            self.conversation = self.db.load(event.conversation_id)
        except ChatDBError as exc:
            self.notify(str(exc), severity="error")
            return
        await self.log_view.show(self.conversation.messages)
        last = next((m.stats for m in reversed(self.conversation.messages) if m.stats), None)
        used = last["prompt_tokens"] + last["gen_tokens"] if last else 0
        self.set_stats(ctx_used=used, note="")
        self.refresh_sidebar()
        self.composer.focus()

    async def on_sidebar_delete(self, event: Sidebar.Delete) -> None:
        if event.conversation_id == self.conversation.id:
            if self.generating is not None:
                self.notify("Stop the reply first (Esc) to delete this chat.", severity="warning")
                return
            await self.action_new_chat()
        try:
            self.db.delete(event.conversation_id)
        except ChatDBError as exc:
            self.history_lost(str(exc))
        self.refresh_sidebar()
        self.notify("Chat deleted")

    def on_sidebar_rename(self, event: Sidebar.Rename) -> None:
        def renamed(title: str | None) -> None:
            if not title:
                return
            if event.conversation_id == self.conversation.id:
                self.conversation.title = title
            try:
                self.db.rename(event.conversation_id, title)
            except ChatDBError as exc:
                self.history_lost(str(exc))
            self.refresh_sidebar()

        self.push_screen(PromptScreen("Rename chat", event.title), renamed)

    async def action_rename_chat(self) -> None:
        if self.conversation.id is None:
            self.notify("This chat is not saved yet: send a message first.", severity="warning")
            return
        self.on_sidebar_rename(Sidebar.Rename(self.conversation.id, self.conversation.title))

    async def action_delete_chat(self) -> None:
        if self.conversation.id is not None:
            await self.on_sidebar_delete(Sidebar.Delete(self.conversation.id))
