"""`DeleteDialog`: confirm deleting a service, with the choice to keep its containers running."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Label, Static

from tui.formatting import plain


class DeleteDialog(ModalScreen[tuple[bool, bool]]):
    """Answers (delete?, keep containers?)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("y", "delete", "Delete", show=False)]

    def __init__(self, name: str, replicas: int) -> None:
        super().__init__(classes="dialog-screen")
        self.service_name = name
        self.replicas = replicas

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog danger"):
            yield Label(plain(f"Delete service {self.service_name}?"), classes="dialog-title")
            yield Static(
                f"Its load balancer and network go away; its {self.replicas} replica(s) are stopped and removed "
                "unless you keep them.",
                classes="help",
            )
            yield Checkbox("Keep the containers running", id="keep", compact=True)
            with Horizontal(classes="buttons"):
                yield Button("Delete", variant="error", id="delete", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    @on(Button.Pressed, "#delete")
    def action_delete(self) -> None:
        self.dismiss((True, self.query_one("#keep", Checkbox).value))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss((False, False))
