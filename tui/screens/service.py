"""`ServiceScreen`: one service — its state and progress, its replicas (live), its logs (live,
searchable) and every field of its spec; with the actions scale, update image, floating IP, delete,
and copying a container id or the service's address.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static, TabbedContent, TabPane

from backend.models import SERVICE_KEYS, Service
from tui.formatting import DASH, address, replicas_up, shell_line, since, status_text
from tui.messages import ContainersChanged, ServicesChanged
from tui.screens.actions import ServiceActions
from tui.screens.base import Banner, ConsoleScreen
from tui.widgets.service.containers_table import ContainersTable
from tui.widgets.service.log_pane import LogPane

BUSY = ("created", "scaling", "updating", "deleting")


def spec_value(service: Service, key: str) -> str:
    value = getattr(service, key)
    if key in ("Entrypoint", "Cmd"):
        return shell_line(value) or DASH
    if key == "Labels":
        return ", ".join(f"{k}={v}" for k, v in (value or {}).items()) or DASH
    if isinstance(value, list):
        return ", ".join(value) or DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return DASH
    return str(value)


class ServiceScreen(ServiceActions, ConsoleScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "scale", "Scale"),
        Binding("u", "update_image", "Update"),
        Binding("f", "floating_ip", "FIP"),
        Binding("d", "delete", "Delete"),
        Binding("c", "copy_id", "Copy id"),
        Binding("a", "copy_address", "Copy addr", show=False),
        Binding("l", "logs", "Logs"),
        Binding("slash", "search_logs", "Search", show=False, key_display="/"),
        Binding("1", "tab('replicas')", "Replicas", show=False),
        Binding("2", "tab('logs')", "Logs", show=False),
        Binding("3", "tab('spec')", "Spec", show=False),
        Binding("m", "message", "Message", show=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__(id="service-screen")
        self.service_name = name
        self.gone = False

    def compose(self) -> ComposeResult:
        yield Header(icon="≡")
        yield Banner(id="banner")
        yield Static("", id="summary")
        yield ProgressBar(id="progress", show_eta=False)
        with TabbedContent(id="tabs", initial="replicas"):
            with TabPane("Replicas", id="replicas"):
                yield ContainersTable(id="containers")
            with TabPane("Logs", id="logs"):
                yield LogPane(self.service_name, id="log-pane")
            with TabPane("Spec", id="spec"):
                yield DataTable(id="spec-table", cursor_type="row", show_header=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).display = False
        self.sub_title = self.service_name
        spec = self.query_one("#spec-table", DataTable)
        spec.add_column("Field", key="Field", width=20)
        spec.add_column("Value", key="Value")
        self.redraw()
        self.redraw_replicas()
        self.app.mark_dirty(services=[self.service_name], containers=[self.service_name])  # type: ignore[attr-defined]
        self.set_interval(15, self._tick)
        self.query_one(ContainersTable).focus()

    # -- drawing -----------------------------------------------------------------------------

    def target_service(self) -> Service | None:
        return self.app.catalog.services.get(self.service_name)  # type: ignore[attr-defined]

    def redraw(self) -> None:
        service = self.target_service()
        summary = self.query_one("#summary", Static)
        progress = self.query_one("#progress", ProgressBar)
        if service is None:
            summary.update(f"[b]{escape(self.service_name)}[/b]  [dim]not known (yet)…[/dim]")
            progress.display = False
            return
        replicas = self.app.catalog.containers.get(service.Name)  # type: ignore[attr-defined]
        up = replicas_up(service, replicas)
        fip = f"  FIP {service.FIP}" if service.FIP else ""
        dot = (" · ", "dim")
        summary.update(
            Text.assemble(
                (service.Name, "bold"), "  ", status_text(service.Status), f"  {up}/{service.Replicas} up", dot,
                address(service), fip, dot, f"{service.Protocol}/{service.Algorithm}", dot,
                f"age {since(service.Created, self.app.now())}\n",  # type: ignore[attr-defined]
                (service.Message, "red" if service.Status == "error" else ""),
            )
        )
        self.sub_title = f"{service.Name} · {service.Image}"
        self._progress(service, replicas)
        self._spec(service)

    def _progress(self, service: Service, replicas) -> None:
        progress = self.query_one("#progress", ProgressBar)
        busy = service.Status in BUSY
        progress.display = busy
        if not busy:
            return
        if service.Message.startswith("Pulling") or replicas is None:
            progress.update(total=None)
            return
        if service.Status == "updating":
            done = sum(1 for r in replicas if not r.Outdated and r.State == "running")
        elif service.Status == "deleting":
            progress.update(total=None)
            return
        else:
            done = sum(1 for r in replicas if r.State == "running")
        progress.update(total=max(1, service.Replicas), progress=min(done, service.Replicas))

    def _spec(self, service: Service) -> None:
        table = self.query_one("#spec-table", DataTable)
        keys = [k for k in SERVICE_KEYS if k != "Containers"]
        if not table.row_count:
            for key in keys:
                table.add_row(Text(key, style="bold"), spec_value(service, key), key=key)
            table.add_row(Text("Containers", style="bold"), str(len(service.Containers or [])), key="Containers")
            return
        for key in keys:
            value = spec_value(service, key)
            if table.get_cell(key, "Value") != value:
                table.update_cell(key, "Value", value)
        table.update_cell("Containers", "Value", str(len(service.Containers or [])))

    def redraw_replicas(self) -> None:
        replicas = self.app.catalog.containers.get(self.service_name)  # type: ignore[attr-defined]
        if replicas is None:
            return
        self.query_one(ContainersTable).show(replicas, self.app.now())  # type: ignore[attr-defined]
        self.query_one(LogPane).set_replicas(replicas)

    def _tick(self) -> None:
        self.redraw()
        self.redraw_replicas()

    def on_services_changed(self, message: ServicesChanged) -> None:
        if message.names is not None and self.service_name not in message.names:
            return
        if self.target_service() is None and self.app.catalog.loaded:  # type: ignore[attr-defined]
            self.gone = True
            if self.is_current:
                self.notify(f"Service {self.service_name} is gone", timeout=4)
                self.app.pop_screen()
            return
        self.redraw()

    def on_containers_changed(self, message: ContainersChanged) -> None:
        if message.name == self.service_name:
            self.redraw_replicas()
            self.redraw()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.gone:
            self.app.pop_screen()

    # -- actions -----------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "replicas":
            self.query_one(ContainersTable).focus()

    def action_logs(self) -> None:
        tabs = self.query_one(TabbedContent)
        pane = self.query_one(LogPane)
        replica = None
        if tabs.active == "replicas":
            selected = self.query_one(ContainersTable).selected_id()
            replicas = self.app.catalog.containers.get(self.service_name) or []  # type: ignore[attr-defined]
            replica = next((r.Name for r in replicas if r.Id == selected), None)
        tabs.active = "logs"
        pane.choose(replica or "")

    def action_search_logs(self) -> None:
        self.query_one(TabbedContent).active = "logs"
        self.query_one(LogPane).focus_search()

    def action_copy_id(self) -> None:
        selected = self.query_one(ContainersTable).selected_id()
        if not selected:
            self.notify("No replica selected", severity="warning")
            return
        self.app.copy_to_clipboard(selected)
        self.notify(f"Copied {selected[:12]}… (full id)", timeout=3)

    def action_message(self) -> None:
        from tui.screens.message import MessageScreen

        service = self.target_service()
        if service is not None:
            self.app.push_screen(MessageScreen(service))

    @on(DataTable.RowSelected, "#containers")
    def _replica_chosen(self) -> None:
        self.action_logs()
