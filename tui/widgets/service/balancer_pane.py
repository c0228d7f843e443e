"""`BalancerPane`: what the service's balancer counts (`GET /services/{name}/balancer`). On top one line
per front (the service's address, its floating IP): sessions open, total, rate, 5xx, bytes; below one
row per replica: its state and last check as HAProxy sees them, its share of the traffic as a bar,
sessions, rate, 5xx and bytes.

Live while shown: HAProxy's counters have no push (no event says "a request went through"), so the
pane reads them once a second, and ONLY while its tab is shown on the current screen; the timer is
paused when the tab is hidden (`hidden`), and a tick that finds the screen covered reads nothing.
Every string from the backend is shown as text (`plain`), never as markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import DataTable, Static

from backend.models import BalancerFront, BalancerReplica, BalancerView
from tui.client import ApiError
from tui.formatting import DASH, HEALTH_STYLE, format_bytes, plain, share_text, traffic_bar

if TYPE_CHECKING:
    from tui.app import ConsoleApp

REFRESH_SECONDS = 1.0  # stats have no push: polled, only while the tab is shown
BAR_WIDTH = 12
STATE_STYLE = {**HEALTH_STYLE, "MAINT": "dim", "DRAIN": "yellow"}
FRONT_NAMES = {"ip": "address", "fip": "floating IP"}


def front_text(front: BalancerFront) -> Text:
    """One front as a line: "address 127.0.0.9:80 · 3 open · 9620 total · 8/s · 17 5xx · in 751 KiB · out 21 MiB"."""
    text = plain(f"{FRONT_NAMES.get(front.Front, front.Front)} ", "bold")
    text.append_text(plain(front.Address, "bold"))
    text.append_text(plain(
        f" · {front.Sessions} open · {front.Total} total · {front.Rate}/s · "
        f"in {format_bytes(front.BytesIn)} · out {format_bytes(front.BytesOut)}", ""))
    if front.Http5xx:
        text.append_text(plain(f" · {front.Http5xx} 5xx", "red"))
    return text


def fronts_text(view: BalancerView) -> Text:
    if not view.Fronts:
        return Text("No balancer answered (starting, or being replaced).", style="dim")
    return Text("\n").join(front_text(front) for front in view.Fronts)


def share_cell(replica: BalancerReplica) -> Text:
    """The traffic bar and the share as a percentage: "██████░░░░░░  50.0%"."""
    text = plain(traffic_bar(replica.Share, BAR_WIDTH), "green" if replica.State == "UP" else "dim")
    text.append_text(plain(f" {share_text(replica.Share):>6}"))
    return text


def check_cell(replica: BalancerReplica) -> Text:
    if not replica.Check:
        return Text(DASH, style="dim")
    ok = replica.Check.startswith(("L7OK", "L4OK", "L6OK"))
    return plain(f"{replica.Check} {replica.CheckMs}ms", "" if ok else "red")


class BalancerPane(Vertical):
    if TYPE_CHECKING:  # the console's own app, for the checker (tui.app imports this module)
        app = getters.app(ConsoleApp)

    def __init__(self, service: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.view: BalancerView | None = None
        self.shown = False
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("Reading the balancer's counters…", style="dim"), id="balancer-fronts")
        yield DataTable(id="balancer-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#balancer-table", DataTable)
        table.add_column("Replica", key="Replica")  # as wide as the longest name
        table.add_column("State", key="State", width=5)
        table.add_column("Traffic", key="Traffic", width=BAR_WIDTH + 7)
        table.add_column("Rate/s", key="Rate", width=6)
        table.add_column("Open", key="Sessions", width=5)
        table.add_column("Total", key="Total")
        table.add_column("5xx", key="Http5xx")
        table.add_column("Check", key="Check")
        table.add_column("In", key="BytesIn")
        table.add_column("Out", key="BytesOut")
        table.add_column("Slot", key="Slot")
        self._timer = self.set_interval(REFRESH_SECONDS, self._tick, pause=True)

    # -- when to read ------------------------------------------------------------------------

    def show_now(self) -> None:
        """The tab is shown: read now, then every REFRESH_SECONDS while it stays shown."""
        self.shown = True
        self.fetch()
        if self._timer is not None:
            self._timer.resume()

    def hidden(self) -> None:
        """The tab is hidden: stop reading."""
        self.shown = False
        if self._timer is not None:
            self._timer.pause()

    def _tick(self) -> None:
        if self.shown and self.screen.is_current:  # another screen (a dialog) on top: nothing to show
            self.fetch()

    @work(exclusive=True, group="balancer", exit_on_error=False)
    async def fetch(self) -> None:
        try:
            view = await self.app.client.balancer(self.service)
        except ApiError as exc:
            self.query_one("#balancer-fronts", Static).update(
                plain(f"Could not read the balancer's counters: {exc.message}", "red"))
            return
        self.show(view)

    # -- drawing -----------------------------------------------------------------------------

    def show(self, view: BalancerView) -> None:
        self.view = view
        self.query_one("#balancer-fronts", Static).update(fronts_text(view))
        table = self.query_one("#balancer-table", DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for replica in view.Replicas:
            table.add_row(
                plain(replica.Replica or DASH, "" if replica.Replica else "dim"),
                plain(replica.State, STATE_STYLE.get(replica.State, "")),
                share_cell(replica),
                str(replica.Rate),
                str(replica.Sessions),
                str(replica.Total),
                plain(str(replica.Http5xx), "red" if replica.Http5xx else ""),
                check_cell(replica),
                format_bytes(replica.BytesIn),
                format_bytes(replica.BytesOut),
                plain(replica.Slot, "dim"),
                key=replica.Slot,
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)
