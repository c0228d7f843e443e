"""`RollbackDialog`: confirm rolling a service back to an earlier revision (or the last good one)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from backend.models import Revision
from tui.formatting import plain


class RollbackDialog(ModalScreen[bool]):
    """Answers whether to roll back; `target` None: to the last revision that was ever ready."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("y", "rollback", "Roll back", show=False)]

    def __init__(self, name: str, image: str, target: Revision | None) -> None:
        super().__init__(classes="dialog-screen")
        self.service_name = name
        self.image = image
        self.target = target

    def compose(self) -> ComposeResult:
        where = (f"revision {self.target.Number} ({self.target.Image})" if self.target
                 else "the last revision whose replicas were all ready")
        with Vertical(classes="dialog"):
            yield Label(plain(f"Roll {self.service_name} back to {where}?"), classes="dialog-title")
            yield Static(
                plain(f"It runs {self.image} now. A new revision with that image is rolled out, one replica at a "
                      "time; the replicas serve throughout."),
                classes="help",
            )
            with Horizontal(classes="buttons"):
                yield Button("Roll back", variant="warning", id="rollback", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    @on(Button.Pressed, "#rollback")
    def action_rollback(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)
