"""A model that failed to load: the reason, and the ways back."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Label, Static


class ErrorScreen(Screen[str]):
    """Dismisses with "pick" (choose another model) or "quit"."""

    BINDINGS = [Binding("m", "pick", "Pick another model"), Binding("q", "quit_app", "Quit")]

    def __init__(self, title: str, reason: str) -> None:
        super().__init__()
        self.title_text = title
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="error"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.reason, id="error-reason")
            with Horizontal(classes="buttons"):
                yield Button("Pick another model", variant="primary", id="pick")
                yield Button("Quit", variant="error", id="quit")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss("pick" if event.button.id == "pick" else "quit")

    def action_pick(self) -> None:
        self.dismiss("pick")

    def action_quit_app(self) -> None:
        self.dismiss("quit")
