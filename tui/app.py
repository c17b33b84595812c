"""`edgellm chat`: the Textual app's shell.

The app owns the engine, the chat database and the open conversation; it lays out the screen, keeps the
history, reacts to a model loading, and holds the one table of actions that both the keys and the command
palette read. What happens to the conversation is `chat.ChatFlow`; the threads that load a model and write a
reply are `worker.EngineWorker`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from .chat import ChatFlow
from .chatdb import MEMORY, ChatDB, ChatDBError, Conversation
from .screens.error import ErrorScreen
from .screens.help import HelpScreen
from .screens.models import ModelPicker
from .screens.settings import SettingsScreen
from .state import ChatSettings, ModelChoice, title_from
from .widgets.messages import ChatLog, MessageView
from .widgets.sidebar import Sidebar
from .widgets.status import ModelHeader, Stats, StatsBar
from .worker import ChatEngine, EngineWorker, LoadedModel, ModelFailed, ModelReady, OpenModel


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


class ChatApp(ChatFlow, EngineWorker, App[None]):
    CSS_PATH = "chat.tcss"
    TITLE = "edgellm chat"

    # Ctrl+C stops a reply like Esc, and quits when there is none: a key only, not a palette command.
    BINDINGS = [Binding("ctrl+c", "interrupt", "Stop", show=False, priority=True)] + [
        Binding(a.key, a.name, a.label or a.title, show=bool(a.label), priority=a.priority) for a in ACTIONS if a.key
    ]

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
        self.pending_images: list[str] = []  # image files attached to the next message
        self.pictures: dict = {}  # image file -> its decoded Picture, for every reply that shows it

    # ----- layout

    def compose(self) -> ComposeResult:
        yield ModelHeader("loading model…", id="header")
        with Horizontal(id="main"):
            yield Sidebar(id="sidebar")
            with Vertical(id="chat"):
                yield ChatLog(id="log")
                yield Static("", id="attachments", markup=False)
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

    def on_model_ready(self, event: ModelReady) -> None:
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
        if loaded.note:
            self.notify(loaded.note, severity="warning")

    def on_model_failed(self, event: ModelFailed) -> None:
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

    def reload(self, ref: str) -> None:
        self.query_one(ModelHeader).update(f"loading {Path(ref).name}…")
        self.set_stats(state="loading model…", tok_s=None)
        old, self.engine = self.engine, None  # no new replies until the load ends
        self.model_ref = ref
        self.load_model(ref, old)

    # ----- actions

    def on_sigint(self) -> None:
        if self.generating is not None:
            self.action_stop()
        else:
            self.cancel.set()
            self.exit(return_code=130)

    async def action_quit(self) -> None:
        self.cancel.set()
        self.exit()

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

    # ----- command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for a in ACTIONS:
            yield SystemCommand(a.title, a.help, getattr(self, f"action_{a.name}"))
