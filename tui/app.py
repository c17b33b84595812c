"""`edgellm chat`: the Textual app.

The app owns the engine, the chat database and the open conversation. The model loads and generates in
worker threads; a reply reaches its MessageView as `Chunk` messages, batched to a few per second so the
UI thread does little work per token, and the view streams them into its Markdown document.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol

from textual import work
from textual.actions import SkipAction
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message as TextualMessage
from textual.screen import Screen
from textual.widgets import Footer, Input

from .chatdb import MEMORY, ChatDB, ChatDBError, Conversation, Message

from .screens.error import ErrorScreen
from .screens.help import HelpScreen
from .screens.models import ModelPicker
from .screens.prompt import PromptScreen
from .screens.settings import SettingsScreen
from .state import ChatSettings, ContextFull, ModelChoice, fit_context, reply_budget, title_from
from .widgets.messages import ChatLog, MessageView
from .widgets.sidebar import Sidebar
from .widgets.status import ModelHeader, Stats, StatsBar

if TYPE_CHECKING:  # the runtime loads llama.cpp: layout tests run without it
    from edgellm.engine.runtime import EngineInfo, GenStats
    from edgellm.engine.sampling import Sampling

# How often the generation thread hands text to the UI. Each update re-lays out and redraws the chat,
# CPU that llama.cpp's threads lose on a small machine: on 2 cores, 30 updates/s cost ~15% of tok/s, 4/s ~10%.
FRAME_S = 0.25
FINISH_NOTES = {"length": "[max tokens]", "context": "[context full]"}


class ChatEngine(Protocol):
    """What the chat needs of a loaded model: edgellm.engine.runtime.Engine, or a scripted one in layout tests."""

    info: EngineInfo
    last_stats: GenStats | None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(
        self, messages: list[dict], sampling: Sampling | None = None, cancel: threading.Event | None = None
    ) -> Iterator[str]: ...

    def close(self) -> None: ...


@dataclass
class LoadedModel:
    """What `open_model` returns: the engine and the planner's one-line account of it."""

    engine: ChatEngine
    path: str  # the GGUF file in use
    plan: str  # one line for the header, e.g. "Q4_1 chosen by the planner · CPU only · ctx 8192"
    explain: str = ""  # the planner's full account of its choice
    lora: str = ""  # the LoRA adapters applied, for the status line ("" when none)


OpenModel = Callable[[str | None, ChatSettings], LoadedModel]


@dataclass(frozen=True)
class Action:
    """One thing the user can do: a key (shown in the footer when it has a label) and a palette command."""

    name: str  # the app's action_<name>
    title: str
    help: str
    key: str | None = None
    label: str = ""  # footer label; "" keeps the key out of the footer
    priority: bool = False  # the key works even where the focused widget would take it


ACTIONS: tuple[Action, ...] = (
    Action("stop", "Stop reply", "Stop the reply being written (keeps what it wrote)", "escape", "Stop"),
    Action("new_chat", "New chat", "Start an empty conversation", "ctrl+n", "New"),
    Action("regenerate", "Regenerate reply", "Write the last reply again", "ctrl+r", "Regen"),
    Action("edit_last", "Edit last message", "Put your last message back in the box to change and resend it",
           "ctrl+e", "Edit", priority=True),
    Action("toggle_sidebar", "Saved chats", "Show or hide the list of saved conversations", "ctrl+b", "Chats"),
    Action("settings", "Settings", "Sampling, context size and system prompt", "ctrl+s", "Set"),
    Action("models", "Pick model", "Local models and how each level fits this machine", "ctrl+o", "Model"),
    Action("copy_reply", "Copy last reply", "Copy the last reply to the clipboard", "ctrl+y"),
    Action("help", "Help", "Keys and what the status line means", "f1", "Help"),
    Action("rename_chat", "Rename chat", "Give this conversation a title"),
    Action("delete_chat", "Delete chat", "Delete this conversation from the history"),
    Action("model_info", "Model info", "Why the planner chose this file, offload and context"),
)


class ChatApp(App[None]):
    CSS_PATH = "chat.tcss"
    TITLE = "edgellm chat"

    # Ctrl+C stops a reply like Esc, and quits when there is none: a key only, not a palette command.
    BINDINGS = [Binding("ctrl+c", "interrupt", "Stop", show=False, priority=True)] + [
        Binding(a.key, a.name, a.label or a.title, show=bool(a.label), priority=a.priority) for a in ACTIONS if a.key
    ]

    class ModelReady(TextualMessage):
        def __init__(self, loaded: LoadedModel) -> None:
            super().__init__()
            self.loaded = loaded

    class ModelFailed(TextualMessage):
        def __init__(self, ref: str | None, reason: str) -> None:
            super().__init__()
            self.ref = ref
            self.reason = reason

    class ContextTrimmed(TextualMessage):
        def __init__(self, dropped: int) -> None:
            super().__init__()
            self.dropped = dropped

    def __init__(
        self,
        open_model: OpenModel,
        model_ref: str | None = None,
        list_models: Callable[[], list[ModelChoice]] = list,
        db_path: Path | str | None = None,
        overrides: dict | None = None,
        handle_sigint: bool = False,
    ) -> None:
        super().__init__()
        self.handle_sigint = handle_sigint
        self.open_model = open_model
        self.model_ref = model_ref
        self.list_models = list_models
        self.db_path = db_path
        self.overrides = overrides or {}
        self.engine: ChatEngine | None = None
        self.loaded: LoadedModel | None = None
        self.model_path: str | None = None
        self.db: ChatDB | None = None
        self.settings = ChatSettings()
        self.conversation = Conversation()
        self.generating: MessageView | None = None  # the reply being written
        self.cancel = threading.Event()
        self.idle = threading.Event()  # set while no generation thread runs
        self.idle.set()

    # ----- layout

    def compose(self) -> ComposeResult:
        yield ModelHeader("loading model…", id="header")
        with Horizontal(id="main"):
            yield Sidebar(id="sidebar")
            with Vertical(id="chat"):
                yield ChatLog(id="log")
                yield Input(placeholder="Message (Enter to send, F1 for help)", id="composer")
        yield StatsBar(id="stats")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        if self.handle_sigint:
            # A SIGINT from outside (the terminal sends Ctrl+C as a key) acts like the key: stop, else quit.
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.on_sigint)
        self.open_db()
        self.query_one(Sidebar).display = self.size.width >= 100
        self.query_one("#composer").focus()
        self.load_model(self.model_ref)

    @property
    def composer(self) -> Input:
        return self.query_one("#composer", Input)

    @property
    def log_view(self) -> ChatLog:
        return self.query_one(ChatLog)

    def set_stats(self, **changes) -> None:
        bar = self.query_one(StatsBar)
        bar.stats = Stats(**{**asdict(bar.stats), **changes})

    # ----- the database

    def open_db(self) -> None:
        from edgellm.paths import chat_db_path

        self.db, problem = ChatDB.open_or_memory(self.db_path or chat_db_path())
        if problem:
            self.history_lost(problem)
        try:
            stored = self.db.get_settings()
        except ChatDBError as exc:
            self.history_lost(str(exc))
            stored = {}
        self.settings = ChatSettings.from_dict({**stored, **self.overrides})
        self.conversation = Conversation(system_prompt=self.settings.system_prompt)
        self.refresh_sidebar()

    def history_lost(self, problem: str) -> None:
        """The database failed: say so once, and keep the chat going in memory."""
        if self.db is None or not self.db.in_memory:
            self.db = ChatDB(MEMORY)
        self.notify(f"{problem}. Chats are kept in memory only.", severity="error", timeout=10)
        self.set_stats(note="history in memory only")

    def persist(self) -> None:
        conv = self.conversation
        if not conv.messages:
            return
        if conv.title == "New chat":
            first = next((m.content for m in conv.messages if m.role == "user"), "")
            conv.title = title_from(first)
        conv.model = self.model_path or ""
        try:
            self.db.save(conv)
        except ChatDBError as exc:
            self.history_lost(str(exc))
            self.db.save(conv)
        self.refresh_sidebar()

    def refresh_sidebar(self) -> None:
        try:
            summaries = self.db.list_conversations()
        except ChatDBError as exc:
            self.history_lost(str(exc))
            summaries = self.db.list_conversations()
        self.query_one(Sidebar).show(summaries, self.conversation.id)

    # ----- the model

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, ref: str | None, old=None) -> None:
        self.idle.wait()  # a stopped reply may still be finishing its last token with the old engine
        if old is not None:
            old.close()
        try:
            loaded = self.open_model(ref, self.settings)
        except Exception as exc:  # any load failure goes to the error screen with its reason
            self.post_message(self.ModelFailed(ref, str(exc) or type(exc).__name__))
        else:
            self.post_message(self.ModelReady(loaded))

    def on_chat_app_model_ready(self, event: ModelReady) -> None:
        loaded = event.loaded
        self.engine = loaded.engine
        self.loaded = loaded
        self.model_path = loaded.path
        info = loaded.engine.info
        # The plan first: at 80 columns a long model name is what gets cut.
        self.query_one(ModelHeader).update(f"{escape(loaded.plan)} · [b]{escape(info.name)}[/b]")
        self.set_stats(
            state="ready",
            ctx_size=info.n_ctx,
            level=info.level,
            gpu_layers=info.gpu_layers,
            lora=loaded.lora,
        )

    def on_chat_app_model_failed(self, event: ModelFailed) -> None:
        self.query_one(ModelHeader).update("no model loaded")
        self.set_stats(state="no model")
        what = event.ref or "the default model"

        def chosen(answer: str | None) -> None:
            if answer == "pick":
                self.action_models()
            else:
                self.exit()

        self.push_screen(ErrorScreen(f"Could not load {what}", event.reason), chosen)

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Stop any reply, wait for the generation thread, free the model (call after run())."""
        self.cancel.set()
        self.idle.wait(wait_s)
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.db is not None:
            self.db.close()

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
        event.input.value = ""
        message = Message("user", text)
        self.conversation.messages.append(message)
        await self.log_view.add(message)
        self.persist()
        await self.start_reply()

    def history(self) -> list[dict]:
        conv = self.conversation
        system = [{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else []
        return system + [m.as_chat() for m in conv.messages]

    async def start_reply(self) -> None:
        view = await self.log_view.add(Message("assistant", ""))
        self.generating = view
        self.cancel = threading.Event()
        self.idle.clear()
        self.set_stats(state="generating…", note="")
        self.generate(view, self.history(), self.settings, self.cancel)

    @work(thread=True, exclusive=True, group="reply")
    def generate(self, view: MessageView, history: list[dict], settings: ChatSettings, cancel: threading.Event) -> None:
        engine = self.engine
        parts: list[str] = []
        try:
            budget = reply_budget(engine.info.n_ctx, settings.max_tokens)
            fitted = fit_context(history, lambda ms: engine.count_tokens(engine.render_chat(ms)), budget)
            if fitted.dropped:
                self.post_message(self.ContextTrimmed(fitted.dropped))
            pending: list[str] = []
            last = time.monotonic()
            for piece in engine.stream_chat(fitted.messages, settings.sampling(), cancel):
                pending.append(piece)
                now = time.monotonic()
                if now - last >= FRAME_S:
                    chunk = "".join(pending)
                    parts.append(chunk)
                    view.post_message(MessageView.Chunk(chunk))
                    pending.clear()
                    last = now
            if pending:
                chunk = "".join(pending)
                parts.append(chunk)
                view.post_message(MessageView.Chunk(chunk))
            view.post_message(MessageView.Finished("".join(parts), engine.last_stats))
        except ContextFull as exc:
            view.post_message(MessageView.Finished("".join(parts), error=f"Context full: {exc}. Start a new chat (Ctrl+N) or raise the context size."))
        except Exception as exc:  # keep the UI alive and show what went wrong
            view.post_message(MessageView.Finished("".join(parts), error=str(exc) or type(exc).__name__))
        finally:
            self.idle.set()

    def on_chat_app_context_trimmed(self, event: ContextTrimmed) -> None:
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
        if message.content or message.stopped:
            self.conversation.messages.append(message)
            self.persist()
        else:
            await view.remove()

    # ----- actions

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

    def on_sigint(self) -> None:
        if self.generating is not None:
            self.action_stop()
        else:
            self.cancel.set()
            self.exit(return_code=130)

    async def action_quit(self) -> None:
        self.cancel.set()
        self.exit()

    async def action_new_chat(self) -> None:
        if self.generating is not None:
            self.notify("Stop the reply first (Esc) to start a new chat.", severity="warning")
            return
        self.conversation = Conversation(system_prompt=self.settings.system_prompt)
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

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = not sidebar.display
        if sidebar.display:
            self.query_one("#conversations").focus()
        else:
            self.composer.focus()

    def action_model_info(self) -> None:
        if self.loaded is None:
            self.notify("No model loaded.", severity="warning")
            return
        self.notify(self.loaded.explain or self.loaded.plan, title=self.loaded.path, timeout=15)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_settings(self) -> None:
        def saved(new: ChatSettings | None) -> None:
            if new is None:
                return
            old, self.settings = self.settings, new
            self.overrides = {}
            self.conversation.system_prompt = new.system_prompt
            try:
                self.db.put_settings(new.to_dict())
            except ChatDBError as exc:
                self.history_lost(str(exc))
            if new.n_ctx != old.n_ctx and self.model_path is not None:
                if self.generating is not None:
                    self.notify("The new context size applies when this reply ends and the model reloads.")
                self.cancel.set()
                self.reload(self.model_path)
            else:
                self.notify("Settings saved")

        self.push_screen(SettingsScreen(self.settings), saved)

    def action_models(self) -> None:
        def chosen(choice: ModelChoice | None) -> None:
            if choice is not None:
                self.cancel.set()
                self.reload(choice.path)

        self.push_screen(ModelPicker(self.list_models, self.model_path), chosen)

    def reload(self, ref: str) -> None:
        self.query_one(ModelHeader).update(f"loading {Path(ref).name}…")
        self.set_stats(state="loading model…", tok_s=None)
        old, self.engine = self.engine, None  # no new replies until the load ends
        self.model_ref = ref
        self.load_model(ref, old)

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

    # ----- command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for a in ACTIONS:
            yield SystemCommand(a.title, a.help, getattr(self, f"action_{a.name}"))
