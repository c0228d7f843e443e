"""`RevisionsPane`: a service's revisions, newest first — every change of its image, with when, by
whom and what became of it (rolling, active, rolled back and why, superseded).

It reads `GET /services/{name}/revisions` when it is first shown and again when the change feed says
the service's history grew (an update or a rollback is recorded there), only while shown; never on a
timer (the reading is `HistoryPane`'s). Every string from the backend is shown as text (`plain`), never as markup.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from backend.models import Revision
from tui.formatting import DASH, plain
from tui.widgets.service.history_pane import HistoryPane, short_time

OUTCOME_STYLE = {"active": "green", "rolling": "yellow", "rolled back": "bold red", "failed": "bold red",
                 "superseded": "dim"}


def outcome_text(revision: Revision) -> Text:
    text = plain(revision.Outcome.value, OUTCOME_STYLE.get(revision.Outcome.value, ""))
    if revision.Reason:
        text.append_text(plain(f" · {revision.Reason}", "dim"))
    return text


class RevisionsPane(HistoryPane[list[Revision]]):
    WHAT = "the revisions"
    NOTE_ID = "revisions-note"
    TABLE_ID = "revisions-table"

    def __init__(self, service: str, **kwargs) -> None:
        super().__init__(service, **kwargs)
        self.revisions: list[Revision] | None = None

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

    async def read(self) -> list[Revision]:
        return await self.app.client.revisions(self.service)

    def show(self, data: list[Revision]) -> None:
        self.revisions = data
        self.query_one("#revisions-note", Static).update(
            Text("r: roll back to the highlighted revision (other tabs: the last good one)", style="dim"))
        now = self.app.now()
        self.refill(
            ((str(revision.Number), plain(revision.Image), short_time(revision.Created, now),
              plain(revision.By or DASH, "" if revision.By else "dim"), outcome_text(revision)), str(revision.Number))
            for revision in data
        )

    def selected(self) -> Revision | None:
        """The highlighted revision, if the list was read."""
        table = self.query_one("#revisions-table", DataTable)
        if not self.revisions or not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((r for r in self.revisions if str(r.Number) == key), None)
