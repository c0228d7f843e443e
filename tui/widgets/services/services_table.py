"""`ServicesTable`: the home screen's table of services, updated row by row as changes arrive.

Columns: Name, Image, Status, Up (replicas UP as the balancer sees them / desired), Protocol,
Address (IP:ServicePort and the FIP), Age, Message. Widths follow the content and the terminal: the
Message column takes what is left (its full text is in the detail line under the table).
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from backend.models import ContainerInfo, Service
from tui.formatting import address, plain, replicas_text, since, status_text, visible

COLUMNS = ("Name", "Image", "Status", "Up", "Protocol", "Address", "Age", "Message")
# Below NARROW columns the Protocol goes (the detail line under the table says it) and long values
# are clipped harder, so that Message still shows at 80 columns.
NARROW_COLUMNS = ("Name", "Status", "Up", "Image", "Address", "Age", "Message")
NARROW = 110
CAPS = {"Name": 28, "Image": 36, "Status": 8, "Up": 7, "Protocol": 9, "Address": 36, "Age": 6}
NARROW_CAPS = {"Name": 14, "Image": 18, "Address": 21}
MESSAGE_MIN = 10
SHRINK_ORDER = (("Image", 12), ("Address", 15), ("Name", 8))  # column, narrowest it gets


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


class ServicesTable(DataTable):
    """A DataTable keyed by service name."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._widths: dict[str, int] = {}
        self._columns: tuple[str, ...] = COLUMNS
        self._shown: list[str] = []

    # -- what a row says ---------------------------------------------------------------------

    def _cells(self, service: Service, containers: list[ContainerInfo] | None, now: datetime) -> dict[str, object]:
        # Values from the backend as Text: a str cell would be parsed as markup.
        return {
            "Name": plain(service.Name),
            "Image": plain(service.Image),
            "Status": status_text(service.Status),
            "Up": replicas_text(service, containers),
            "Protocol": plain(service.Protocol),
            "Address": plain(address(service)),
            "Age": since(service.Created, now),
            "Message": plain(service.Message, "red" if service.Status == "error" else ""),
        }

    def _natural_widths(self, services: list[Service]) -> dict[str, int]:
        narrow = bool(self.size.width) and self.size.width < NARROW
        self._columns = NARROW_COLUMNS if narrow else COLUMNS
        widths = {}
        for column in self._columns[:-1]:
            cap = (NARROW_CAPS if narrow else {}).get(column, CAPS[column])
            longest = len(column)
            for service in services:
                longest = max(longest, len(self._plain(column, service)))
            widths[column] = min(cap, longest)
        available = (self.size.width or 80) - 2 - 2 * len(self._columns)  # scrollbar, cell padding
        # Too wide for Message to show at all: give up characters of the long free-text columns first.
        for column, least in SHRINK_ORDER:
            excess = sum(widths.values()) + MESSAGE_MIN - available
            if excess <= 0:
                break
            if column in widths:
                widths[column] = max(least, widths[column] - excess)
        used = sum(widths.values())
        longest_message = max([len(visible(s.Message)) for s in services] + [len("Message")])
        widths["Message"] = max(MESSAGE_MIN, min(longest_message, available - used))
        return widths

    @staticmethod
    def _plain(column: str, service: Service) -> str:
        if column == "Up":
            return f"{service.Replicas}/{service.Replicas}"
        if column == "Address":
            return visible(address(service))
        if column == "Age":
            return "00h00m"
        if column in ("Name", "Image", "Status", "Protocol"):
            return visible(str(getattr(service, column)))
        return ""

    # -- showing -----------------------------------------------------------------------------

    def show(self, services: list[Service], containers: dict[str, list[ContainerInfo]], now: datetime,
             changed: frozenset[str] | None = None) -> None:
        """Make the table show `services` (sorted); only rows in `changed` are redrawn (None: all)."""
        widths = self._natural_widths(services)
        names = [s.Name for s in services]
        if widths != self._widths or not self.columns:
            self._rebuild(services, containers, now, widths)
            return
        by_name = {s.Name: s for s in services}
        for name in [n for n in self._shown if n not in by_name]:
            self.remove_row(name)
        added = False
        for service in services:
            if service.Name not in self.rows:
                self.add_row(*self._row(service, containers.get(service.Name), now, widths), key=service.Name)
                added = True
            elif changed is None or service.Name in changed:
                self._update_row(service, containers.get(service.Name), now, widths)
        if added:
            self.sort("Name")
        self._shown = names

    def _row(self, service: Service, containers: list[ContainerInfo] | None, now: datetime, widths: dict[str, int]) -> list:
        cells = self._cells(service, containers, now)
        row = []
        for column in self._columns:
            value = cells[column]
            if isinstance(value, str):
                value = _clip(value, widths[column])
            elif isinstance(value, Text) and len(value) > widths[column]:
                value = value[: widths[column] - 1] + Text("…", style=value.style)
            row.append(value)
        return row

    def _update_row(self, service: Service, containers: list[ContainerInfo] | None, now: datetime, widths: dict[str, int]) -> None:
        for column, value in zip(self._columns, self._row(service, containers, now, widths), strict=False):
            if self.get_cell(service.Name, column) != value:
                self.update_cell(service.Name, column, value)

    def _rebuild(self, services: list[Service], containers: dict[str, list[ContainerInfo]], now: datetime,
                 widths: dict[str, int]) -> None:
        selected = self.selected_name()
        self.clear(columns=True)
        for column in self._columns:
            self.add_column(column, key=column, width=widths[column])
        for service in services:
            self.add_row(*self._row(service, containers.get(service.Name), now, widths), key=service.Name)
        self._widths = widths
        self._shown = [s.Name for s in services]
        if selected:
            self.select_name(selected)

    def refresh_ages(self, services: dict[str, Service], now: datetime) -> None:
        for name in self._shown:
            service = services.get(name)
            if service is not None:
                value = since(service.Created, now)
                if self.get_cell(name, "Age") != value:
                    self.update_cell(name, "Age", value)

    def selected_name(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # no cursor yet
            return None
        return str(key.value) if key.value is not None else None

    def select_name(self, name: str) -> bool:
        try:
            index = self.get_row_index(name)
        except RowDoesNotExist:
            return False
        self.move_cursor(row=index)
        return True
