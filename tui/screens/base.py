"""`ConsoleScreen`: what every full screen of the console shares.

Its workers' failures become notifications (the app's `report_error`), and the connection banner
(backend or Docker engine unreachable, with what was tried and how to fix it) is kept up to date.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import getters
from textual.screen import Screen
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from tui.formatting import plain
from tui.messages import ConnectionChanged

if TYPE_CHECKING:
    from tui.app import ConsoleApp


class Banner(Static):
    """One line (wrapping) at the top saying what is unreachable; hidden when all is well."""

    def show_problem(self, problem: str | None) -> None:
        self.display = bool(problem)
        if problem:
            self.update(plain(f"⚠ {problem}  The console reconnects by itself.", newlines=True))


class ConsoleScreen(Screen):
    if TYPE_CHECKING:  # the console's own app, for the checker (tui.app imports this module)
        app = getters.app(ConsoleApp)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.app.report_error(event.worker.error)

    def on_screen_resume(self) -> None:
        self._show_problem()

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        self._show_problem()

    def _show_problem(self) -> None:
        for banner in self.query(Banner):
            banner.show_problem(self.app.catalog.problem)
