"""`EventsPane`: a service's history — why it is where it is. On top the recent trouble grouped by
cause, as the backend sums it up ("1 replica OOM-killed 3 times in the last 5 min — web-cdexy"); below
every entry, newest first: status changes, replica starts, exits (exit code, OOM kill), replacements,
health changes and the operator's actions (with who asked).

It reads `GET /services/{name}/events` when it is first shown and again whenever the backend's change
feed says the service's history grew; while hidden it only notes that it is stale. Never on a timer
(the reading is `HistoryPane`'s). Every string from the backend is shown as text (`plain`), never as markup.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from backend.models import ServiceEvent, ServiceHistory
from tui.formatting import DASH, HEALTH_STYLE, STATUS_STYLE, plain
from tui.widgets.service.history_pane import HistoryPane, short_time

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


class EventsPane(HistoryPane[ServiceHistory]):
    WHAT = "the history"
    NOTE_ID = "events-summary"
    TABLE_ID = "events-table"

    def __init__(self, service: str, **kwargs) -> None:
        super().__init__(service, **kwargs)
        self.history: ServiceHistory | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("Reading the history…", style="dim"), id="events-summary")
        yield DataTable(id="events-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#events-table", DataTable)
        table.add_column("When", key="When", width=11)
        table.add_column("Replica", key="Replica")  # as wide as the longest name
        table.add_column("Event", key="Event", width=9)
        table.add_column("Details", key="Details")

    async def read(self) -> ServiceHistory:
        return await self.app.client.service_events(self.service, limit=LIMIT)

    def show(self, data: ServiceHistory) -> None:
        self.history = data
        self.query_one("#events-summary", Static).update(summary_text(data))
        now = self.app.now()
        self.refill(
            ((short_time(event.Time, now), plain(event.Replica or DASH, "" if event.Replica else "dim"),
              event_label(event), event_details(event)), str(event.Id))
            for event in reversed(data.Events)  # newest first
        )
