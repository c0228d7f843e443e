"""`EventsPane`: a service's history — why it is where it is. On top the recent trouble grouped by
cause, as the backend sums it up ("1 replica OOM-killed 3 times in the last 5 min — web-cdexy"); below
every entry, newest first: status changes, replica starts, exits (exit code, OOM kill), replacements,
health changes and the operator's actions (with who asked).

It reads `GET /services/{name}/events` when it is first shown and again whenever the backend's change
feed says the service's history grew (`changed`, coalesced); while hidden it only notes that it is
stale. Never on a timer. Every string from the backend is shown as text (`plain`), never as markup.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from backend.models import ServiceEvent, ServiceHistory
from tui.client import ApiError
from tui.formatting import DASH, HEALTH_STYLE, STATUS_STYLE, parse_time, plain

if TYPE_CHECKING:
    from tui.app import ConsoleApp

COALESCE_SECONDS = 0.1  # entries recorded close together (a replica's die, restart, DOWN) share one read
LIMIT = 200  # entries shown
TROUBLE_STYLE = {"OOM-killed": "bold red", "exited": "red", "replaced": "#e08000", "went DOWN": "#e08000"}
REPLICA_STYLE = {"start": "green", "restart": "yellow", "replace": "#e08000", "remove": "dim"}


def event_label(event: ServiceEvent) -> Text:
    """The Event column: what kind of thing happened, coloured by how bad it is."""
    if event.Type == "replica" and event.Action == "die":
        if event.OOMKilled:
            return Text("OOM kill", style="bold red")
        return plain(f"exit {event.ExitCode}" if event.ExitCode is not None else "exit", "red")
    if event.Type == "replica":
        return plain(event.Action, REPLICA_STYLE.get(event.Action, ""))
    if event.Type == "health":
        return plain(event.Action, HEALTH_STYLE.get(event.Action, "dim"))
    if event.Type == "status":
        return plain(event.Action, STATUS_STYLE.get(event.Action, ""))
    return plain(event.Action, "bold cyan")  # an operator's action


def event_details(event: ServiceEvent) -> Text:
    text = plain(event.Message or DASH)
    if event.By:
        text.append_text(plain(f" · by {event.By}", "dim"))
    return text


def event_time(value: str, now: datetime) -> str:
    """"11:58:12" today, "03-13 11:58" before (UTC, as the log pane's clock)."""
    when = parse_time(value)
    if when is None:
        return DASH
    return when.strftime("%H:%M:%S") if when.date() == now.date() else when.strftime("%m-%d %H:%M")


def summary_text(history: ServiceHistory) -> Text:
    """The grouped causes, one line each, with the replicas they hit."""
    if not history.Summary:
        minutes = f"{history.Window // 60} min" if history.Window % 60 == 0 else f"{history.Window} s"
        return Text(f"No replica trouble in the last {minutes}.", style="dim")
    lines = Text()
    for index, group in enumerate(history.Summary):
        if index:
            lines.append("\n")
        style = next((s for cause, s in TROUBLE_STYLE.items() if group.Cause.startswith(cause)), "")
        lines.append("▲ ", style=style)
        lines.append_text(plain(group.Text, style))
        if group.Replicas:
            shown = ", ".join(group.Replicas[:3]) + (f" +{len(group.Replicas) - 3}" if len(group.Replicas) > 3 else "")
            lines.append_text(plain(f" — {shown}", "dim"))
    return lines


class EventsPane(Vertical):
    if TYPE_CHECKING:  # the console's own app, for the checker (tui.app imports this module)
        app = getters.app(ConsoleApp)

    def __init__(self, service: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.history: ServiceHistory | None = None
        self.shown = False  # the tab is on screen: changes are read at once
        self.stale = True  # the history grew since it was last read
        self._scheduled = False

    def compose(self) -> ComposeResult:
        yield Static(Text("Reading the history…", style="dim"), id="events-summary")
        yield DataTable(id="events-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#events-table", DataTable)
        table.add_column("When", key="When", width=11)
        table.add_column("Replica", key="Replica")  # as wide as the longest name
        table.add_column("Event", key="Event", width=9)
        table.add_column("Details", key="Details")

    # -- when to read ------------------------------------------------------------------------

    def show_now(self) -> None:
        """The tab is shown: read the history if it changed meanwhile (or was never read)."""
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

    @work(exclusive=True, group="history", exit_on_error=False)
    async def fetch(self) -> None:
        try:
            history = await self.app.client.service_events(self.service, limit=LIMIT)
        except ApiError as exc:
            self.stale = True  # read again on the next change
            self.query_one("#events-summary", Static).update(plain(f"Could not read the history: {exc.message}", "red"))
            return
        self.show(history)

    # -- drawing -----------------------------------------------------------------------------

    def show(self, history: ServiceHistory) -> None:
        self.history = history
        self.query_one("#events-summary", Static).update(summary_text(history))
        table = self.query_one("#events-table", DataTable)
        now = self.app.now()
        selected = None
        if table.row_count and table.cursor_row > 0:  # keep the operator's place; at the top, follow the newest
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for event in reversed(history.Events):  # newest first
            table.add_row(
                event_time(event.Time, now), plain(event.Replica or DASH, "" if event.Replica else "dim"),
                event_label(event), event_details(event), key=str(event.Id),
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)
