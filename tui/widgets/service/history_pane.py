"""`HistoryPane`: what the service view's Events and Revisions tabs share. Both show a part of the
service's history in a table under a one-line note, and read it the same way: when first shown and
again whenever the backend's change feed says the history grew (`changed`, coalesced), only while
shown (hidden, the pane only notes that it is stale); never on a timer. A failed read is said in the
note and retried on the next change. Also `short_time`, the tables' time column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from rich.console import RenderableType
from textual import getters, work
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tui.client import ApiError
from tui.formatting import DASH, parse_time, plain

if TYPE_CHECKING:
    from tui.app import ConsoleApp

COALESCE_SECONDS = 0.1  # entries recorded close together (a replica's die, restart, DOWN) share one read

Read = TypeVar("Read")


def short_time(value: str, now: datetime) -> str:
    """"11:58:12" today, "03-13 11:58" before (UTC, as the log pane's clock)."""
    when = parse_time(value)
    if when is None:
        return DASH
    return when.strftime("%H:%M:%S") if when.date() == now.date() else when.strftime("%m-%d %H:%M")


class HistoryPane(Vertical, Generic[Read]):
    """The reading and the table; a subclass says what it reads (`read`) and how it draws it (`show`)."""

    if TYPE_CHECKING:  # the console's own app, for the checker (tui.app imports this module)
        app = getters.app(ConsoleApp)

    WHAT: ClassVar[str]  # what the pane reads, for the error note: "the history"
    NOTE_ID: ClassVar[str]  # the Static above the table
    TABLE_ID: ClassVar[str]

    def __init__(self, service: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.shown = False  # the tab is on screen: changes are read at once
        self.stale = True  # the history grew since it was last read
        self._scheduled = False

    # -- when to read ------------------------------------------------------------------------

    def show_now(self) -> None:
        """The tab is shown: read if the history changed meanwhile (or was never read)."""
        self.shown = True
        if self.stale:
            self._schedule()

    def hidden(self) -> None:
        self.shown = False

    def changed(self) -> None:
        """The change feed says the service's history grew."""
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

    async def read(self) -> Read:
        raise NotImplementedError

    def show(self, data: Read) -> None:
        raise NotImplementedError

    @work(exclusive=True, group="history", exit_on_error=False)
    async def fetch(self) -> None:
        try:
            data = await self.read()
        except ApiError as exc:
            self.stale = True  # read again on the next change
            self.query_one(f"#{self.NOTE_ID}", Static).update(plain(f"Could not read {self.WHAT}: {exc.message}", "red"))
            return
        self.show(data)

    # -- drawing -----------------------------------------------------------------------------

    def refill(self, rows: Iterable[tuple[Sequence[RenderableType], str]]) -> None:
        """Replace the table's rows (cells, key), newest first, keeping the operator's place; a cursor
        at the top follows the newest."""
        table = self.query_one(f"#{self.TABLE_ID}", DataTable)
        selected = None
        if table.row_count and table.cursor_row > 0:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for cells, key in rows:
            table.add_row(*cells, key=key)
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)
