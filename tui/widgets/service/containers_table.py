"""`ContainersTable`: a service's replicas — Id, Name, State, Health (as the balancer sees it, with
since-when), Node (on swarm: where each runs), Address, Restarts, Uptime, CPU and memory (from the stats stream) and, when wide, the image
each runs — redrawn in place when the app re-reads them or a stats sample arrives.

Which columns show depends on the table's width (the richest layout that fits): at 80 columns the Id
(the name says the same; `c` copies the full id) and the network address give way to CPU and memory;
wide, memory also says of how much and the image column appears.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from backend.models import ContainerInfo
from tui.formatting import DASH, cpu_text, health_text, memory_text, plain, short_id, since, state_text, visible

ALL_COLUMNS = ("Id", "Name", "State", "Health", "Address", "Restarts", "Uptime", "CPU", "Memory", "Image")
# The layouts, richest first: the first whose columns fit the table's width is shown. "wide" layouts
# say memory as "used / limit (share)".
LAYOUTS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (ALL_COLUMNS, True),
    (("Id", "Name", "State", "Health", "Address", "Restarts", "Uptime", "CPU", "Memory"), True),
    (("Id", "Name", "State", "Health", "Address", "Restarts", "Uptime", "CPU", "Memory"), False),
    (("Name", "State", "Health", "Address", "Restarts", "Uptime", "CPU", "Memory"), False),
    (("Name", "State", "Health", "Restarts", "Uptime", "CPU", "Memory"), False),
)
# Columns whose text changes every second get fixed widths, so the table does not jump around.
FIXED = {"Id": 12, "Health": 12, "Restarts": 8, "Uptime": 6, "CPU": 6, "Memory": 9}
WIDE_FIXED = {"Health": 14, "CPU": 7, "Memory": 24}
CAPS = {"Name": 32, "Address": 22, "Image": 40, "State": 10, "Node": 20}
NAME_MIN = 10
RIGHT = ("Restarts", "CPU", "Memory")


def with_node(columns: tuple[str, ...]) -> tuple[str, ...]:
    """A layout with the Node column after State: the replicas run on several nodes (swarm)."""
    at = columns.index("State") + 1
    return (*columns[:at], "Node", *columns[at:])


def _clip(text: Text, width: int) -> Text:
    if len(text) <= width:
        return text
    clipped = text[: max(1, width - 1)]
    clipped.append("…", style=text.style)
    return clipped


class ContainersTable(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._shown: list[str] = []
        self._columns: tuple[str, ...] = ()
        self._wide = False
        self._widths: dict[str, int] = {}
        self._last: tuple[list[ContainerInfo], datetime, Mapping[str, object]] | None = None

    # -- layout ------------------------------------------------------------------------------

    def _layout(self, replicas: list[ContainerInfo]) -> tuple[tuple[str, ...], bool, dict[str, int]]:
        """The richest layout that fits the width: (columns, wide, width of each column)."""
        width = self.size.width or 110
        available = width - 2  # the vertical scrollbar
        layouts = LAYOUTS if not any(r.Node for r in replicas) else tuple((with_node(c), w) for c, w in LAYOUTS)
        for columns, wide in layouts:
            widths = self._widths_for(replicas, columns, wide)
            if sum(widths.values()) + 2 * len(columns) <= available:
                return columns, wide, widths
        # Not even the narrowest fits: the name takes what is left (clipped with "…" below that).
        columns, wide = layouts[-1]
        widths = self._widths_for(replicas, columns, wide)
        others = sum(w for c, w in widths.items() if c != "Name")
        widths["Name"] = max(NAME_MIN, min(widths["Name"], available - 2 * len(columns) - others))
        return columns, wide, widths

    def _widths_for(self, replicas: list[ContainerInfo], columns: tuple[str, ...], wide: bool) -> dict[str, int]:
        widths: dict[str, int] = {}
        for column in columns:
            fixed = (WIDE_FIXED if wide else {}).get(column, FIXED.get(column))
            if fixed:
                widths[column] = fixed
                continue
            longest = max([len(column)] + [len(self._plain(column, r)) for r in replicas])
            widths[column] = min(CAPS.get(column, longest), longest)
        return widths

    @staticmethod
    def _plain(column: str, replica: ContainerInfo) -> str:
        if column == "Name":
            return visible(replica.Name) + (" (old image)" if replica.Outdated else "")
        if column == "State":
            return visible(replica.State or DASH)
        if column == "Address":
            return visible(replica.Address or DASH)
        if column == "Node":
            return visible(replica.Node or DASH)
        if column == "Image":
            return visible(replica.Image or DASH)
        return ""

    # -- what a row says ---------------------------------------------------------------------

    def _cells(self, replica: ContainerInfo, now: datetime, stats: object | None, wide: bool) -> dict[str, str | Text]:
        running = replica.State == "running"
        sample = stats if running else None  # the last sample of a stopped replica is not its state now
        name = plain(replica.Name)
        if replica.Outdated and not wide:
            name.append(" (old image)", style="dim")
        image = plain(replica.Image or DASH, "yellow" if replica.Outdated else "")
        return {
            "Id": short_id(replica.Id),
            "Name": name,
            "State": state_text(replica.State),
            "Health": health_text(replica.Health, replica.HealthSince, now),
            "Address": replica.Address or DASH,
            "Node": replica.Node or DASH,
            "Restarts": Text(str(replica.Restarts), justify="right"),
            "Uptime": since(replica.Started, now) if running else DASH,
            "CPU": Text(cpu_text(getattr(sample, "CPUPercent", None)), justify="right"),
            "Memory": Text(memory_text(getattr(sample, "MemoryBytes", None), getattr(sample, "MemoryLimit", None), wide),
                           justify="right"),
            "Image": image,
        }

    def _row(self, replica: ContainerInfo, now: datetime, stats: Mapping[str, object]) -> list[Text]:
        cells = self._cells(replica, now, stats.get(replica.Id), self._wide)
        row = []
        for column in self._columns:
            value = cells[column]
            width = self._widths[column]
            if isinstance(value, str):
                value = plain(value)
            row.append(_clip(value, width))
        return row

    # -- showing -----------------------------------------------------------------------------

    def show(self, replicas: list[ContainerInfo], now: datetime, stats: Mapping[str, object] | None = None) -> None:
        """Show `replicas`, with the latest stats sample of each (by container id) when there is one."""
        stats = stats or {}
        self._last = (replicas, now, stats)
        columns, wide, widths = self._layout(replicas)
        ids = [r.Id for r in replicas]
        if (columns, wide, widths) != (self._columns, self._wide, self._widths) or ids != self._shown:
            self._rebuild(replicas, now, stats, columns, wide, widths)
            return
        for replica in replicas:
            for column, value in zip(self._columns, self._row(replica, now, stats), strict=False):
                if self.get_cell(replica.Id, column) != value:
                    self.update_cell(replica.Id, column, value)

    def _rebuild(self, replicas: list[ContainerInfo], now: datetime, stats: Mapping[str, object],
                 columns: tuple[str, ...], wide: bool, widths: dict[str, int]) -> None:
        selected = self.selected_id()
        if columns != self._columns or widths != self._widths or wide != self._wide or not self.columns:
            self.clear(columns=True)
            self._columns, self._wide, self._widths = columns, wide, widths
            for column in columns:
                label = Text(column, justify="right") if column in RIGHT else column
                self.add_column(label, key=column, width=widths[column])
        else:
            self.clear()
        for replica in replicas:
            self.add_row(*self._row(replica, now, stats), key=replica.Id)
        self._shown = [r.Id for r in replicas]
        if selected in self._shown:
            self.move_cursor(row=self._shown.index(selected))

    def on_resize(self) -> None:
        if self._last is not None:
            self.call_after_refresh(self._show_last)

    def _show_last(self) -> None:
        if self._last is not None:
            self.show(*self._last)

    def selected_id(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except (RowDoesNotExist, Exception):
            return None
        return str(key.value) if key.value is not None else None
