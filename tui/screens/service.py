"""`ServiceScreen`: one service — its state and progress (bytes pulled, while its image is pulled),
its replicas (live, with the balancer's health and CPU / memory from the stats stream), its logs
(live, searchable), every field of its spec, its history (events: what happened and why, live) and
the balancer's counters (traffic share per replica, live while shown);
with the actions scale, update image, floating IP, delete, and copying a container id or the
service's address.

The stats stream (`GET /services/{name}/stats`) is read only while this screen exists: a thin worker
hands samples over in batches; the stream is (re)opened whenever the set of running replicas changes
(the backend ends it once the replicas it started with are gone), never on a timer. An engine that has
no stats (the swarm engine answers 400) is not asked again: the summary says so in one line instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static, TabbedContent, TabPane

from backend.models import SERVICE_KEYS, Service
from tui.client import ApiError, ReplicaStats
from tui.formatting import (
    DASH,
    cpu_text,
    format_bytes,
    own_address,
    plain,
    replicas_up,
    shell_line,
    since,
    status_text,
    visible,
)
from tui.messages import ContainersChanged, HistoryChanged, PullProgressed, ServicesChanged
from tui.screens.actions import ServiceActions
from tui.screens.base import Banner, ConsoleScreen
from tui.widgets.service.balancer_pane import BalancerPane
from tui.widgets.service.containers_table import ContainersTable
from tui.widgets.service.events_pane import EventsPane
from tui.widgets.service.log_pane import LogPane
from tui.widgets.service.revisions_pane import RevisionsPane

BUSY = ("created", "scaling", "updating", "deleting")
STATS_FLUSH_SECONDS = 0.25  # samples of several replicas arriving close together are drawn together


STATS_REFUSED_NOTE = "no CPU/memory figures on this engine"  # the backend answered 400 (swarm)


@dataclass
class StatsSamples(Message):
    """The latest samples of some replicas, from the stats stream opened as `generation`."""

    samples: dict[str, ReplicaStats]
    generation: int


@dataclass
class StatsEnded(Message):
    """The stats stream opened as `generation` ended (`problem`: why, when it failed)."""

    generation: int
    problem: str | None = None
    refused: bool = False  # the backend answered 400: this engine has no stats (swarm)


def spec_value(service: Service, key: str) -> Text:
    """The Spec tab's cell for `key`: plain text (a str cell would be parsed as markup)."""
    return plain(_spec_text(service, key))


def _spec_text(service: Service, key: str) -> str:
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
        Binding("4", "tab('events')", "Events", show=False),
        Binding("5", "tab('balancer')", "Balancer", show=False),
        Binding("6", "tab('revisions')", "Revisions", show=False),
        Binding("r", "rollback", "Rollback", show=False),  # said in the Revisions tab and the help
        Binding("m", "message", "Message", show=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__(id="service-screen")
        self.service_name = name
        self.gone = False
        self.stats: dict[str, ReplicaStats] = {}  # the latest sample of each replica, by container id
        self._stats_key: frozenset[tuple[str, str]] | None = None  # the running replicas the stream covers
        self._stats_generation = 0
        self._stats_open = False
        self._stats_pending: dict[str, ReplicaStats] = {}
        self._stats_flush_scheduled = False
        self.stats_refused: str | None = None  # why the backend has no stats (its 400), once it said so

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
            with TabPane("Events", id="events"):
                yield EventsPane(self.service_name, id="events-pane")
            with TabPane("Balancer", id="balancer"):
                yield BalancerPane(self.service_name, id="balancer-pane")
            with TabPane("Revisions", id="revisions"):
                yield RevisionsPane(self.service_name, id="revisions-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).display = False
        self.sub_title = visible(self.service_name)
        spec = self.query_one("#spec-table", DataTable)
        spec.add_column("Field", key="Field", width=20)
        spec.add_column("Value", key="Value")
        self.redraw()
        self.redraw_replicas()
        self.follow_stats_if_needed()
        self.app.mark_dirty(services=[self.service_name], containers=[self.service_name])
        self.set_interval(15, self._tick)
        self.query_one(ContainersTable).focus()

    # -- drawing -----------------------------------------------------------------------------

    def target_service(self) -> Service | None:
        return self.app.catalog.services.get(self.service_name)

    def redraw(self, summary_only: bool = False) -> None:
        service = self.target_service()
        summary = self.query_one("#summary", Static)
        progress = self.query_one("#progress", ProgressBar)
        if service is None:
            summary.update(Text.assemble(plain(self.service_name, "bold"), ("  not known (yet)…", "dim")))
            progress.display = False
            return
        replicas = self.app.catalog.containers.get(service.Name)
        up = replicas_up(service, replicas)
        dot = (" · ", "dim")
        head = Text.assemble(plain(service.Name, "bold"), "  ", status_text(service.Status), f"  {up}/{service.Replicas} up")
        parts = [plain(own_address(service))]
        if service.FIP:
            parts.append(plain(f"FIP {service.FIP}"))
        parts.append(Text(f"age {since(service.Created, self.app.now())}"))
        optional = [plain(f"{service.Protocol}/{service.Algorithm}")]
        running = {r.Id for r in replicas or [] if r.State == "running"}
        samples = [sample for key, sample in self.stats.items() if key in running]
        if samples:  # the whole service, from the replicas' latest samples
            cpu = sum(s.CPUPercent or 0.0 for s in samples)
            memory = sum(s.MemoryBytes or 0 for s in samples)
            optional.append(Text(f"CPU {cpu_text(cpu)} · memory {format_bytes(memory)}", style="dim"))
        elif self.stats_refused is not None:
            optional.append(Text(STATS_REFUSED_NOTE, style="dim"))
        room = (self.size.width or 80) - 2
        for extra in optional:  # what fits on the first line, in this order
            if len(head) + sum(len(p) + 3 for p in parts) + len(extra) + 3 <= room:
                parts.insert(-1, extra)
        line = head.copy()
        for part in parts:
            line.append_text(Text.assemble(dot, part))
        summary.update(Text.assemble(line, "\n", plain(service.Message, "red" if service.Status == "error" else "", newlines=True)))
        if summary_only:  # a stats sample: only the totals in the summary changed
            return
        self.sub_title = visible(f"{service.Name} · {service.Image}")
        self._progress(service, replicas)
        self._spec(service)

    def _progress(self, service: Service, replicas) -> None:
        progress = self.query_one("#progress", ProgressBar)
        busy = service.Status in BUSY
        progress.display = busy
        if not busy:
            return
        pull = self.app.catalog.pull_of(service)
        if pull is not None and pull.total:  # bytes pulled of those known (the message says the rest)
            progress.update(total=pull.total, progress=pull.done)
            return
        if service.Message.startswith("Pulling") or replicas is None:
            progress.update(total=None)
            return
        if service.Status == "deleting" or "floating IP" in service.Message:
            progress.update(total=None)
            return
        # A replica counts once it serves: UP at the balancer (running, before there is one).
        balanced = any(r.Health for r in replicas)
        ready = [r for r in replicas if r.State == "running" and (r.Health == "UP" or not balanced)]
        done = sum(1 for r in ready if not r.Outdated) if service.Status == "updating" else len(ready)
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
        replicas = self.app.catalog.containers.get(self.service_name)
        if replicas is None:
            return
        ids = {r.Id for r in replicas}
        for gone in [i for i in self.stats if i not in ids]:
            del self.stats[gone]
        self.query_one(ContainersTable).show(replicas, self.app.now(), self.stats)
        self.query_one(LogPane).set_replicas(replicas)

    # -- the stats stream --------------------------------------------------------------------

    def follow_stats_if_needed(self) -> None:
        """Open the stats stream, or reopen it when the running replicas are not the ones it covers."""
        replicas = self.app.catalog.containers.get(self.service_name)
        if replicas is None or self.gone or self.stats_refused is not None:
            return
        key = frozenset((r.Id, r.Started) for r in replicas if r.State == "running")
        if key == self._stats_key and (self._stats_open or not key):
            return
        self._stats_key = key
        self._stats_generation += 1
        if not key:  # nothing running: nothing to sample
            self._stats_open = False
            self.workers.cancel_group(self, "stats")
            return
        self._stats_open = True
        self.follow_stats(self._stats_generation)

    @work(exclusive=True, group="stats", exit_on_error=False)
    async def follow_stats(self, generation: int) -> None:
        problem, refused = None, False
        try:
            async for sample in self.app.client.stats(self.service_name):
                self._stats_pending[sample.Id] = sample
                if not self._stats_flush_scheduled:
                    self._stats_flush_scheduled = True
                    self.set_timer(STATS_FLUSH_SECONDS, lambda: self._flush_stats(generation))
        except ApiError as exc:
            problem, refused = exc.message, exc.status == 400
        self._flush_stats(generation)
        self.post_message(StatsEnded(generation, problem, refused))

    def _flush_stats(self, generation: int) -> None:
        self._stats_flush_scheduled = False
        samples, self._stats_pending = self._stats_pending, {}
        if samples:
            self.post_message(StatsSamples(samples, generation))

    def on_stats_samples(self, message: StatsSamples) -> None:
        if message.generation != self._stats_generation:
            return
        self.stats.update(message.samples)
        self.redraw_replicas()
        self.redraw(summary_only=True)

    def on_stats_ended(self, message: StatsEnded) -> None:
        if message.generation == self._stats_generation:
            # Reopened by the next change of the replicas (or the next connect), not retried in a loop.
            self._stats_open = False
            if message.refused:  # not on this engine (swarm): never asked again, the summary says so
                self.stats_refused = message.problem or "no stats on this engine"
                self.redraw(summary_only=True)

    def _tick(self) -> None:
        self.redraw()
        self.redraw_replicas()

    def on_services_changed(self, message: ServicesChanged) -> None:
        if message.names is not None and self.service_name not in message.names:
            return
        if self.target_service() is None and self.app.catalog.loaded:
            self.gone = True
            if self.is_current:
                self.notify(f"Service {self.service_name} is gone", timeout=4)
                self.app.pop_screen()
            return
        self.redraw()

    def on_pull_progressed(self, message: PullProgressed) -> None:
        if message.name == self.service_name:
            self.redraw()

    def on_containers_changed(self, message: ContainersChanged) -> None:
        if message.name == self.service_name:
            self.redraw_replicas()
            self.redraw()
            self.follow_stats_if_needed()

    def on_history_changed(self, message: HistoryChanged) -> None:
        if message.name == self.service_name:
            self.query_one(EventsPane).changed()
            self.query_one(RevisionsPane).changed()  # updates and rollbacks are in the history

    @on(TabbedContent.TabActivated, "#tabs")
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        pane = self.query_one(EventsPane)
        if event.pane.id == "events":
            pane.show_now()
        else:
            pane.hidden()
        balancer = self.query_one(BalancerPane)
        if event.pane.id == "balancer":
            balancer.show_now()
        else:
            balancer.hidden()
        revisions = self.query_one(RevisionsPane)
        if event.pane.id == "revisions":
            revisions.show_now()
        else:
            revisions.hidden()

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
        elif tab == "events":
            self.query_one("#events-table", DataTable).focus()
        elif tab == "balancer":
            self.query_one("#balancer-table", DataTable).focus()
        elif tab == "revisions":
            self.query_one("#revisions-table", DataTable).focus()

    def action_rollback(self) -> None:
        """Roll back, after a confirmation: on the Revisions tab to the highlighted revision, elsewhere
        to the last good one (the backend picks it, and refuses the current one or nothing to go to)."""
        from tui.screens.rollback import RollbackDialog

        service = self.target_service()
        if service is None:
            return
        target = None
        if self.query_one(TabbedContent).active == "revisions":
            target = self.query_one(RevisionsPane).selected()
        app, name, number = self.app, service.Name, target.Number if target else None

        def done(confirmed: bool | None) -> None:
            if not confirmed:
                return

            async def rollback() -> None:
                app.notify(f"Rolling {name} back…", timeout=3)
                app.remember(await app.client.rollback(name, number))

            app.run_worker(rollback(), group="action", exit_on_error=False)

        self.app.push_screen(RollbackDialog(name, service.Image, target), done)

    def action_events(self) -> None:
        self.action_tab("events")

    def action_logs(self) -> None:
        tabs = self.query_one(TabbedContent)
        pane = self.query_one(LogPane)
        replica = None
        if tabs.active == "replicas":
            selected = self.query_one(ContainersTable).selected_id()
            replicas = self.app.catalog.containers.get(self.service_name) or []
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
