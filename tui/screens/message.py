"""`MessageScreen`: a service's whole status message (errors can be long), to read or copy."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from backend.models import Service
from tui.formatting import plain


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
            yield Label(plain(f"{self.service.Name}: {self.service.Status}"), classes="dialog-title")
            with VerticalScroll():
                message = plain(self.service.Message, newlines=True) if self.service.Message else Text("(no message)")
                yield Static(message, id="message-text")
            yield Static("[b]c[/b] copy   [b]esc[/b] close", classes="help")

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.service.Message)
        self.notify("Message copied", timeout=3)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
