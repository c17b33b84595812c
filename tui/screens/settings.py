"""Sampling and context settings; dismisses with the new ChatSettings, or None on cancel."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Number
from textual.widgets import Button, Input, Label, TextArea

from ..state import ChatSettings

# field -> (label, input type, lowest, highest)
FIELDS: dict[str, tuple[str, str, float, float]] = {
    "temperature": ("Temperature (0 = greedy)", "number", 0.0, 5.0),
    "top_p": ("Top-p", "number", 0.0, 1.0),
    "top_k": ("Top-k (0 = off)", "integer", 0, 100_000),
    "min_p": ("Min-p", "number", 0.0, 1.0),
    "max_tokens": ("Max tokens per reply", "integer", 1, 1_000_000),
    "seed": ("Seed (-1 = random)", "integer", -1, 2**31 - 1),
    "n_ctx": ("Context size (0 = planner)", "integer", 0, 1_048_576),
}


class SettingsScreen(ModalScreen[ChatSettings | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(id="settings", classes="dialog"):
            yield Label("Settings", classes="dialog-title")
            with Grid(id="settings-grid"):
                for name, (label, kind, low, high) in FIELDS.items():
                    yield Label(label)
                    yield Input(
                        str(getattr(self.settings, name)),
                        type=kind,
                        id=f"set-{name}",
                        validators=[Number(minimum=low, maximum=high)],
                        compact=True,
                    )
            yield Label("System prompt (new chats; this chat too)")
            yield TextArea(self.settings.system_prompt, id="set-system_prompt", compact=True)
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_save(self) -> None:
        values = {}
        for name, (label, kind, _, _) in FIELDS.items():
            box = self.query_one(f"#set-{name}", Input)
            result = box.validate(box.value)
            if result is not None and not result.is_valid:
                self.notify(f"{label}: {'; '.join(result.failure_descriptions)}", severity="error")
                box.focus()
                return
            values[name] = float(box.value) if kind == "number" else int(box.value)
        values["system_prompt"] = self.query_one("#set-system_prompt", TextArea).text.strip()
        self.dismiss(replace(self.settings, **values))
