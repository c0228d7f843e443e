"""`ContainersTable`: a service's replicas — Id, Name, State, Health (as the balancer sees it),
Address, Restarts, Uptime, CPU and memory — redrawn in place when the app re-reads them."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from backend.models import ContainerInfo
from tui.formatting import DASH, format_bytes, health_text, short_id, since, state_text

COLUMNS = ("Id", "Name", "State", "Health", "Address", "Restarts", "Uptime", "CPU", "Memory")


def _cpu(replica: ContainerInfo) -> str:
    value = getattr(replica, "CPUPercent", None)
    return f"{float(value):.1f}%" if isinstance(value, int | float) else DASH


def _memory(replica: ContainerInfo) -> str:
    value = getattr(replica, "MemoryBytes", None)
    return format_bytes(value) if isinstance(value, int | float) else DASH


class ContainersTable(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._shown: list[str] = []

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column, key=column)

    def _cells(self, replica: ContainerInfo, now: datetime) -> list[object]:
        uptime = since(replica.Started, now) if replica.State == "running" else DASH
        name = Text(replica.Name)
        if replica.Outdated:
            name.append(" (old image)", style="dim")
        return [
            short_id(replica.Id),
            name,
            state_text(replica.State),
            health_text(replica.Health),
            replica.Address or DASH,
            str(replica.Restarts),
            uptime,
            _cpu(replica),
            _memory(replica),
        ]

    def show(self, replicas: list[ContainerInfo], now: datetime) -> None:
        ids = [r.Id for r in replicas]
        if ids != self._shown:
            selected = self.selected_id()
            self.clear()
            for replica in replicas:
                self.add_row(*self._cells(replica, now), key=replica.Id)
            self._shown = ids
            if selected in ids:
                self.move_cursor(row=ids.index(selected))
            return
        for replica in replicas:
            for column, value in zip(COLUMNS, self._cells(replica, now)):
                if self.get_cell(replica.Id, column) != value:
                    self.update_cell(replica.Id, column, value)

    def selected_id(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except (RowDoesNotExist, Exception):
            return None
        return str(key.value) if key.value is not None else None
