"""The model picker: every local GGUF file with its quant level and whether it fits this machine."""

from __future__ import annotations

from typing import Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, LoadingIndicator, OptionList
from textual.widgets.option_list import Option

from edgellm.fsutil import human_bytes

from ..state import ModelChoice


def _row(choice: ModelChoice, current: str | None) -> str:
    mark = "●" if choice.path == current else " "
    verdict = choice.fit if choice.fits else f"[red]{choice.fit}[/]"
    return f"{mark} {choice.name}  [b]{choice.level}[/]  {human_bytes(choice.size)}\n   {verdict}"


class ModelPicker(ModalScreen[ModelChoice | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, list_models: Callable[[], list[ModelChoice]], current: str | None) -> None:
        super().__init__()
        self.list_models = list_models
        self.current = current
        self.choices: list[ModelChoice] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="models"):
            yield Label("Pick a model (fit planned for this machine)", classes="dialog-title")
            yield LoadingIndicator()
            yield OptionList(id="model-list")

    def on_mount(self) -> None:
        self.query_one(OptionList).display = False
        self.load_choices()

    @work(thread=True, exclusive=True)
    def load_choices(self) -> None:
        try:
            choices = self.list_models()
        except Exception as exc:  # a broken file must not take the picker down
            self.app.call_from_thread(self.notify, f"cannot list models: {exc}", severity="error")
            choices = []
        self.app.call_from_thread(self.show, choices)

    def show(self, choices: list[ModelChoice]) -> None:
        self.choices = choices
        self.query_one(LoadingIndicator).display = False
        options = self.query_one(OptionList)
        options.display = True
        if not choices:
            options.add_option(Option("No local models. `edgellm pull` or `edgellm package` makes one.", disabled=True))
        options.add_options([Option(_row(c, self.current), id=str(i)) for i, c in enumerate(choices)])
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        choice = self.choices[int(event.option.id)]
        if not choice.fits:
            self.notify(f"{choice.name} {choice.level} does not fit: {choice.fit}", severity="warning")
        self.dismiss(choice)

    def action_cancel(self) -> None:
        self.dismiss(None)
