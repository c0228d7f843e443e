"""`ServicesScreen`: the home screen. The table of services, live; filter; open; the service actions.

It redraws only the rows the app says changed (`ServicesChanged`), and shows the highlighted
service's whole message under the table (`m` opens it in a dialog, to read or copy).
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Input, Static

from backend.models import Service
from tui.formatting import address, own_address, plain, status_text
from tui.messages import ContainersChanged, ServicesChanged
from tui.screens.actions import ServiceActions
from tui.screens.base import Banner, ConsoleScreen
from tui.widgets.services.services_table import ServicesTable

AGE_TICK_SECONDS = 15.0


class ServicesScreen(ServiceActions, ConsoleScreen):
    BINDINGS = [
        Binding("n", "new_service", "New"),
        Binding("enter", "open", "Open", key_display="⏎"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "scale", "Scale"),
        Binding("u", "update_image", "Update"),
        Binding("f", "floating_ip", "FIP"),
        Binding("d", "delete", "Delete"),
        Binding("m", "message", "Message", show=False),
        Binding("a", "copy_address", "Copy address", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="services-screen")
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        yield Header(icon="≡")
        yield Banner(id="banner")
        yield Input(placeholder="Filter: name, image, status, address or message (esc clears)", id="filter")
        with Vertical(id="services-body"):
            yield ServicesTable(id="services")
            yield Static("", id="empty")
        yield Static("", id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#banner", Banner).display = False
        self.set_interval(AGE_TICK_SECONDS, self._tick_ages)
        self.redraw(None)
        self.query_one(ServicesTable).focus()

    # -- drawing -----------------------------------------------------------------------------

    @property
    def table(self) -> ServicesTable:
        return self.query_one(ServicesTable)

    def visible_services(self) -> list[Service]:
        services = self.app.catalog.sorted_services()
        needle = self.filter_text.lower().strip()
        if not needle:
            return services
        return [
            s for s in services
            if any(needle in text.lower() for text in (s.Name, s.Image, s.Status, s.Message, address(s), s.Protocol))
        ]

    def redraw(self, changed: frozenset[str] | None) -> None:
        catalog = self.app.catalog
        services = self.visible_services()
        self.table.show(services, catalog.containers, self.app.now(), changed)
        empty = self.query_one("#empty", Static)
        self.table.display = bool(services)
        if services and self.focused is None and self.is_current:
            self.table.focus()
        if services:
            empty.display = False
        else:
            empty.display = True
            if not catalog.loaded:
                empty.update("Loading services…")
            elif self.filter_text:
                empty.update(Text.assemble("No service matches “", plain(self.filter_text), "”.  esc clears the filter."))
            else:
                empty.update("No services yet.\n\nPress [b]n[/b] to create one, [b]?[/b] for help.")
        self._show_detail()

    def on_services_changed(self, message: ServicesChanged) -> None:
        self.redraw(message.names)

    def on_containers_changed(self, message: ContainersChanged) -> None:
        pass  # ServicesChanged carries the redraw

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.redraw(None)

    def on_resize(self) -> None:
        self.call_after_refresh(self.redraw, None)

    def _tick_ages(self) -> None:
        self.table.refresh_ages(self.app.catalog.services, self.app.now())

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        detail = self.query_one("#detail", Static)
        service = self.target_service()
        detail.display = service is not None
        if service is None:
            return
        fip = f" · FIP {service.FIP}" if service.FIP else ""
        detail.update(
            Text.assemble(
                plain(service.Name, "bold"), " ", status_text(service.Status),
                plain(f" · {service.Image} · {own_address(service)}{fip}"), "\n",
                plain(service.Message, "red" if service.Status == "error" else "", newlines=True),
            )
        )

    # -- actions -----------------------------------------------------------------------------

    def target_service(self) -> Service | None:
        name = self.table.selected_name()
        return self.app.catalog.services.get(name) if name else None

    def action_new_service(self) -> None:
        from tui.screens.create import CreateServiceScreen

        def created(service: Service | None) -> None:
            if service is not None:
                self.app.remember(service)
                self.redraw(None)
                self.table.select_name(service.Name)

        self.app.push_screen(CreateServiceScreen(), created)

    def action_open(self, name: str | None = None) -> None:
        from tui.screens.service import ServiceScreen

        service = self.app.catalog.services.get(name) if name else self.target_service()
        if service is None:
            self.notify("No service selected", severity="warning")
            return
        self.app.push_screen(ServiceScreen(service.Name))

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_open(str(event.row_key.value))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.redraw(None)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display or self.filter_text:
            box.value = ""
            box.display = False
            self.filter_text = ""
            self.redraw(None)
            self.table.focus()

    def action_message(self) -> None:
        from tui.screens.message import MessageScreen

        service = self.target_service()
        if service is not None:
            self.app.push_screen(MessageScreen(service))
