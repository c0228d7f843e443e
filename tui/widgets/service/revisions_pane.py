"""`RevisionsPane`: a service's revisions, newest first — every change of its image, with when, by
whom and what became of it (rolling, active, rolled back and why, superseded).

It reads `GET /services/{name}/revisions` when it is first shown and again when the change feed says
the service's history grew (an update or a rollback is recorded there), only while shown; never on a
timer. Every string from the backend is shown as text (`plain`), never as markup.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from backend.models import Revision
from tui.client import ApiError
from tui.formatting import DASH, parse_time, plain

if TYPE_CHECKING:
    from tui.app import ConsoleApp

COALESCE_SECONDS = 0.1
OUTCOME_STYLE = {"active": "green", "rolling": "yellow", "rolled back": "bold red", "failed": "bold red",
                 "superseded": "dim"}


def revision_time(value: str, now: datetime) -> str:
    """"11:58:12" today, "03-13 11:58" before (UTC)."""
    when = parse_time(value)
    if when is None:
        return DASH
    return when.strftime("%H:%M:%S") if when.date() == now.date() else when.strftime("%m-%d %H:%M")


def outcome_text(revision: Revision) -> Text:
    text = plain(revision.Outcome.value, OUTCOME_STYLE.get(revision.Outcome.value, ""))
    if revision.Reason:
        text.append_text(plain(f" · {revision.Reason}", "dim"))
    return text


class RevisionsPane(Vertical):
    if TYPE_CHECKING:
        app = getters.app(ConsoleApp)

    def __init__(self, service: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.revisions: list[Revision] | None = None
        self.shown = False
        self.stale = True
        self._scheduled = False

    def compose(self) -> ComposeResult:
        yield Static(Text("Reading the revisions…", style="dim"), id="revisions-note")
        yield DataTable(id="revisions-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#revisions-table", DataTable)
        table.add_column("Rev", key="Rev", width=4)
        table.add_column("Image", key="Image")
        table.add_column("When", key="When", width=11)
        table.add_column("By", key="By")
        table.add_column("Outcome", key="Outcome")

    def show_now(self) -> None:
        self.shown = True
        if self.stale:
            self._schedule()

    def hidden(self) -> None:
        self.shown = False

    def changed(self) -> None:
        self.stale = True
        if self.shown:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.set_timer(COALESCE_SECONDS, self._read)

    def _read(self) -> None:
        self._scheduled = False
        self.stale = False
        self.fetch()

    @work(exclusive=True, group="revisions", exit_on_error=False)
    async def fetch(self) -> None:
        try:
            revisions = await self.app.client.revisions(self.service)
        except ApiError as exc:
            self.stale = True
            self.query_one("#revisions-note", Static).update(plain(f"Could not read the revisions: {exc.message}", "red"))
            return
        self.show(revisions)

    def show(self, revisions: list[Revision]) -> None:
        self.revisions = revisions
        self.query_one("#revisions-note", Static).update(
            Text("r: roll back to the highlighted revision (other tabs: the last good one)", style="dim"))
        table = self.query_one("#revisions-table", DataTable)
        selected = None
        if table.row_count and table.cursor_row > 0:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        now = self.app.now()
        for revision in revisions:
            table.add_row(
                str(revision.Number), plain(revision.Image), revision_time(revision.Created, now),
                plain(revision.By or DASH, "" if revision.By else "dim"), outcome_text(revision),
                key=str(revision.Number),
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)

    def selected(self) -> Revision | None:
        """The highlighted revision, if the list was read."""
        table = self.query_one("#revisions-table", DataTable)
        if not self.revisions or not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((r for r in self.revisions if str(r.Number) == key), None)
