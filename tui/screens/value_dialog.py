"""`ValueDialog`: what the console's one-value dialogs share (`PromptDialog`, `FloatingIPDialog`).

The value in the dialog's one `Input` is checked as it is typed (the subclass's `_problem`, which also
shows the problem); `enter` or the `#confirm` button answers it (stripped) when it has no problem,
`escape` or `#cancel` answers None.
"""

from __future__ import annotations

from textual import on
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Button, Input


class ValueDialog(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def _problem(self) -> str | None:
        """Check the typed value and show what is wrong with it (None: nothing)."""
        raise NotImplementedError

    @on(Input.Changed)
    def _changed(self) -> None:
        self._problem()

    @on(Input.Submitted)
    @on(Button.Pressed, "#confirm")
    def _submit(self) -> None:
        if self._problem() is None:
            self.dismiss(self.query_one(Input).value.strip())

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
