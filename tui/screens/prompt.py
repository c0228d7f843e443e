"""`PromptDialog`: a small modal asking for one value (scale, new image; the floating IP has its own).

The value is checked as it is typed with the backend's `ServiceUpdate` model (the caller passes the
check), the problem shown under the input; `enter` answers, `escape` cancels. Title, help and problem
are shown as plain text (they carry service names and typed values). Answering is `ValueDialog`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static

from tui.formatting import plain, visible
from tui.screens.value_dialog import ValueDialog


class PromptDialog(ValueDialog):
    def __init__(self, title: str, field: str, value: str, help: str, check: Callable[[str], str | None],
                 confirm: str = "Apply", placeholder: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.field = field
        self.initial = value
        self.help = help
        self.check = check
        self.confirm = confirm
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(plain(self.title_text), classes="dialog-title")
            yield Input(visible(self.initial), id=self.field, placeholder=self.placeholder, select_on_focus=True, compact=True)
            yield Static(plain(self.help), classes="help")
            yield Static("", classes="error", id=f"{self.field}-error")
            with Horizontal(classes="buttons"):
                yield Button(self.confirm, variant="primary", id="confirm", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def _problem(self) -> str | None:
        problem = self.check(self.query_one(Input).value)
        error = self.query_one(f"#{self.field}-error", Static)
        error.update(plain(f"✗ {problem}") if problem else "")
        error.display = bool(problem)
        return problem
