"""`MessageScreen`: a service's whole status message (errors can be long), to read or copy."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from backend.models import Service


class MessageScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,m", "dismiss", "Close"),
        Binding("c", "copy", "Copy"),
    ]

    def __init__(self, service: Service) -> None:
        super().__init__(classes="dialog-screen")
        self.service = service

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"{self.service.Name}: {self.service.Status}", classes="dialog-title")
            with VerticalScroll():
                yield Static(escape(self.service.Message or "(no message)"), id="message-text")
            yield Static("[b]c[/b] copy   [b]esc[/b] close", classes="help")

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.service.Message)
        self.notify("Message copied", timeout=3)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
