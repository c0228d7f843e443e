"""`FieldRow`: one field of a form — its name, its control, and one line under it that gives the
field's help, or its problem (in red) when it has one."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static, Switch

from tui.formatting import plain


class FieldRow(Vertical):
    """Wraps the control whose id is the field's name; `show_error` puts a problem under it."""

    def __init__(self, field: str, control: Widget, help: str, required: bool = False) -> None:
        super().__init__(classes="field-row", id=f"row-{field}")
        self.field = field
        self.control = control
        self.help = help
        self.required = required
        self._error: str | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-line"):
            yield Label(f"{self.field}{' *' if self.required else ''}", classes="field-label")
            yield self.control
            if isinstance(self.control, Switch):
                yield Label(self._switch_text(), classes="switch-state")
        yield Static(self.help, classes="field-note", id=f"{self.field}-note", markup=False)

    def _switch_text(self) -> str:
        return "yes" if getattr(self.control, "value", False) else "no"

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self.query_one(".switch-state", Label).update(self._switch_text())

    def set_help(self, help: str) -> None:
        """New help text (e.g. the backend's limit became known); shown unless there is a problem."""
        if help == self.help:
            return
        self.help = help
        if self._error is None:
            self.query_one(".field-note", Static).update(help)

    def show_error(self, message: str | None) -> None:
        if message == self._error:
            return  # nothing to redraw: typing stays cheap
        self._error = message
        self.query_one(".field-note", Static).update(plain(f"✗ {message}") if message else self.help)
        self.set_class(bool(message), "invalid")

    @property
    def error_text(self) -> str:
        return f"✗ {self._error}" if self._error else ""
