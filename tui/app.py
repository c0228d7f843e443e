"""`ConsoleApp`: the console itself. Owns the connection to the backend and the live picture of it.

It starts the backend in-process (or attaches to a remote one), follows the backend's `/events`
stream (reconnecting with backoff; on every `hello` it re-reads the list and every service's replicas,
`GET /replicas`, one call each — and, attached remotely, the backend's limits), turns each event into
a targeted refetch (one service, or one service's replicas; bursts are coalesced; a balancer health
event is shown at once, before its refetch), keeps the result in a `Catalog`, and tells the screens on
the stack what changed (`tui.messages`). No polling: when nothing happens, nothing runs but a timer
that ages the "age" column. (The service view reads its replicas' stats stream while it is open.)
`pull` events (bytes and layers of an image being pulled) are kept as they come, for progress bars.

Every API failure ends in `report_error`: a notification with the server's message, never a traceback.
Notifications are plain text: never parsed as markup, control characters shown (`notify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from backend.models import ContainerInfo, Service
from tui.catalog import Catalog, Pull
from tui.client import ApiClient, ApiError, ConsoleClient
from tui.commands import ServiceCommands
from tui.formatting import plain, visible
from tui.messages import (
    ConnectionChanged,
    ContainersChanged,
    HistoryChanged,
    LimitsChanged,
    PullProgressed,
    ServicesChanged,
)

log = logging.getLogger(__name__)

RECONNECT_FIRST, RECONNECT_MAX = 0.5, 15.0
COALESCE_SECONDS = 0.03  # events arriving this close together share one refetch
FETCH_CONCURRENCY = 8


class ConsoleApp(App[None]):
    """The hyperservice console. `api_url` None: an in-process backend on the local Docker engine.

    Keyword-only extras (tests, benchmarks): `backend` (an in-process `Backend` to use, owned by the
    caller), `client` (a `ConsoleClient`: an `ApiClient` or a test's fake), `settings` (for the backend the app
    starts itself), `clock` (what "now" is, for ages and uptimes).
    """

    CSS_PATH = "app.tcss"
    TITLE = "hyperservice"
    ENABLE_COMMAND_PALETTE = True
    COMMANDS = App.COMMANDS | {ServiceCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
    ]

    @dataclass
    class BackendEvent(Message):
        """One line of the /events stream."""

        event: dict[str, Any]

    @dataclass
    class StreamLost(Message):
        """The /events stream broke; the next try is in `retry_in` seconds."""

        problem: str
        retry_in: float

    @dataclass
    class Fetched(Message):
        """Fresh answers for some services (None: gone) and some services' replicas."""

        services: dict[str, Service | None] = field(default_factory=dict)
        containers: dict[str, list[ContainerInfo]] = field(default_factory=dict)
        full_list: list[Service] | None = None
        max_replicas: int | None = None

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        *,
        backend: Any = None,
        client: ConsoleClient | None = None,
        settings: Any = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.api_url = api_url
        self.token = token
        self.catalog = Catalog()
        self._client: ConsoleClient | None = client
        self._backend = backend
        self._own_backend = False
        self._settings = settings
        self._clock = clock
        self._dirty_services: set[str] = set()
        self._dirty_containers: set[str] = set()
        self._flush_scheduled = False
        self.start_error: str | None = None
        self.max_replicas = getattr(getattr(backend, "settings", None), "max_replicas", None) or 100

    # -- life cycle --------------------------------------------------------------------------

    @property
    def client(self) -> ConsoleClient:
        assert self._client is not None, "the client is made on mount"
        return self._client

    def now(self) -> datetime:
        return self._clock() if self._clock else datetime.now(UTC)

    def get_default_screen(self) -> Screen:
        from tui.screens.services import ServicesScreen

        if self.start_error:
            return Screen()  # nothing to show: on_mount exits with the reason
        return ServicesScreen()

    def on_load(self) -> None:
        if self._client is None:
            try:
                self._client = self._make_client()
            except Exception as exc:  # e.g. the data directory cannot be written: say so, no traceback
                self.start_error = f"hyperservice: cannot start the in-process backend: {exc}"

    async def on_mount(self) -> None:
        if self.start_error:
            self.exit(return_code=1, message=plain(self.start_error, newlines=True))  # printed: never markup
            return
        self.sub_title = visible(self.target_description())
        self.follow_events()
        self.show_engine()

    def _make_client(self) -> ApiClient:
        if self.api_url:
            return ApiClient.remote(self.api_url, self.token)
        if self._backend is None:
            from backend.core import Backend
            from backend.settings import Settings

            settings = self._settings or Settings()
            self.max_replicas = settings.max_replicas
            self._backend = Backend(settings)
            self._own_backend = True
            self._backend.start()
        return ApiClient.in_process(self._backend)

    @work(exclusive=True, group="engine", exit_on_error=False)
    async def show_engine(self) -> None:
        """Name the engine that runs the services (docker or swarm) in the header, once the backend says."""
        try:
            engine = await self.client.engine()
        except ApiError:  # an older backend without /engine, or one not answering: the header stays
            return
        if engine:
            # The engine first: at 80 columns the header keeps it, and the rest may be cut.
            self.sub_title = visible(f"{engine} engine · {self.target_description(short=True)}")

    def target_description(self, short: bool = False) -> str:
        """Where the services are: the backend's URL, or in-process and the engine's address
        (`short`: the default local engine goes unsaid, as the engine's name precedes it)."""
        if self.api_url:
            return self.api_url
        import os

        host = os.environ.get("DOCKER_HOST")
        if short:
            return f"in-process · {host}" if host else "in-process"
        return f"in-process · {host or 'local Docker engine'}"

    async def on_unmount(self) -> None:
        self.workers.cancel_all()
        if self._client is not None:
            with contextlib.suppress(Exception):  # closing a client whose streams already broke
                await self._client.aclose()
        if self._own_backend and self._backend is not None:
            await asyncio.to_thread(self._backend.close)

    # -- the event stream --------------------------------------------------------------------

    @work(exclusive=True, group="events", exit_on_error=False)
    async def follow_events(self) -> None:
        delay = RECONNECT_FIRST
        while True:
            try:
                async for event in self.client.events():
                    delay = RECONNECT_FIRST
                    self.post_message(self.BackendEvent(event))
                problem = f"the backend at {self.client.description} closed the event stream"
            except ApiError as exc:
                problem = exc.message
            except Exception as exc:  # anything else breaking the stream: retry the same way
                problem = f"event stream failed: {exc or exc.__class__.__name__}"
            self.post_message(self.StreamLost(problem, delay))
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    def on_console_app_stream_lost(self, message: StreamLost) -> None:
        if self.api_url or message.retry_in >= 2:
            self.catalog.connection_problem = f"{message.problem} — retrying in {message.retry_in:g}s"
            self.broadcast(lambda: ConnectionChanged(self.catalog.problem))

    def on_console_app_backend_event(self, message: BackendEvent) -> None:
        event = message.event
        kind, action = event.get("Type"), event.get("Action")
        if kind == "ping":
            return
        if kind == "hello":
            self.catalog.connection_problem = None
            engine = event.get("Engine", "ok")
            self.catalog.engine_problem = None if engine in ("ok", None, "") else str(engine)
            self.broadcast(lambda: ConnectionChanged(self.catalog.problem))
            self.reload()
            return
        if kind == "engine":
            self.catalog.engine_problem = str(event.get("Message") or "Docker engine not reachable") if action == "down" else None
            self.broadcast(lambda: ConnectionChanged(self.catalog.problem))
            if action == "up":
                self.reload()
            return
        if kind == "history":  # a service's history grew: its open Events tab reads it again
            history_of = str(event.get("Service") or "")
            if history_of:
                self.broadcast(lambda: HistoryChanged(history_of))
            return
        if kind == "backend" and action == "notice":  # e.g. the balancer runs the offline fallback image
            self.notify(str(event.get("Message") or ""), title="backend", severity="warning", timeout=20)
            return
        if kind == "pull" and action == "progress":  # bytes and layers of a pull, for a progress bar
            self._record_pull(event)
            return
        if kind == "service":
            name = str(event.get("Name") or "")
            if not name:
                return
            if action == "deleted":
                self.catalog.remove(name)
                self._dirty_services.discard(name)
                self.broadcast(lambda: ServicesChanged(frozenset({name})))
                return
            current = self.catalog.services.get(name)
            if current is not None and "Status" in event:
                patched = current.model_copy(update={"Status": event["Status"], "Message": event.get("Message", current.Message)})
                self.catalog.put(patched)
                self.broadcast(lambda: ServicesChanged(frozenset({name})))
            self.mark_dirty(services=[name], containers=[name] if action != "status" else [])
            return
        service = event.get("Service")
        if service:  # a replica changed (container events; health from the balancer)
            if kind == "container" and action == "health":
                self._patch_health(str(service), str(event.get("Id") or ""), str(event.get("Health") or ""))
            self.mark_dirty(containers=[str(service)])

    def _record_pull(self, event: dict[str, Any]) -> None:
        name = str(event.get("Name") or "")
        try:
            pull = Pull(str(event.get("Image") or ""), int(event.get("Done") or 0), int(event.get("Total") or 0),
                        int(event.get("Layers") or 0), int(event.get("LayersDone") or 0))
        except (TypeError, ValueError):  # not numbers: nothing to draw a bar from
            return
        if name:
            self.catalog.pulls[name] = pull
            self.broadcast(lambda: PullProgressed(name))

    def _patch_health(self, service: str, container_id: str, health: str) -> None:
        """Show a health change at once; the refetch it triggers brings the backend's since-when."""
        replicas = self.catalog.containers.get(service)
        if not replicas or not container_id:
            return
        now = self.now().isoformat().replace("+00:00", "Z")
        patched = [
            r.model_copy(update={"Health": health, "HealthSince": now}) if r.Id == container_id and r.Health != health else r
            for r in replicas
        ]
        if patched != replicas:
            self.catalog.containers[service] = patched
            self.broadcast(lambda: ServicesChanged(frozenset({service})))
            self.broadcast(lambda: ContainersChanged(service))

    # -- refetching what changed ---------------------------------------------------------------

    def mark_dirty(self, services: Iterable[str] = (), containers: Iterable[str] = ()) -> None:
        self._dirty_services.update(services)
        self._dirty_containers.update(containers)
        if not self._flush_scheduled and (self._dirty_services or self._dirty_containers):
            self._flush_scheduled = True
            self.set_timer(COALESCE_SECONDS, self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        services, containers = self._dirty_services, self._dirty_containers
        self._dirty_services, self._dirty_containers = set(), set()
        if services or containers:
            self.refetch(services, containers)

    @work(group="refetch", exit_on_error=False)
    async def refetch(self, services: set[str], containers: set[str]) -> None:
        limit = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one_service(name: str) -> tuple[str, Service | None]:
            async with limit:
                try:
                    return name, await self.client.get_service(name)
                except ApiError as exc:
                    if exc.status == 404:
                        return name, None
                    raise

        async def one_replica_list(name: str) -> tuple[str, list[ContainerInfo] | None]:
            async with limit:
                try:
                    return name, await self.client.containers(name)
                except ApiError as exc:
                    if exc.status in (404, 500):  # gone, or the engine is away: keep what we had
                        return name, None
                    raise

        services_found, replicas_found = await asyncio.gather(  # all requests at once, as many as `limit` lets
            asyncio.gather(*(one_service(n) for n in services)),
            asyncio.gather(*(one_replica_list(n) for n in containers)),
        )
        fetched = self.Fetched()
        for name, service in services_found:
            fetched.services[name] = service
        for name, replicas in replicas_found:
            if replicas is not None:
                fetched.containers[name] = replicas
        self.post_message(fetched)

    @work(exclusive=True, group="reload", exit_on_error=False)
    async def reload(self) -> None:
        """On connect: the whole list and every service's replicas (`GET /replicas`, one call), and —
        attached to a remote backend — the limits the form validates against (`GET /limits`)."""

        async def replicas() -> dict[str, list[ContainerInfo]] | None:
            try:
                return await self.client.all_replicas()
            except ApiError as exc:
                if exc.status in (404, 405):  # a backend without /replicas: one call per service below
                    return None
                if exc.status == 500:  # the engine is away: the list still shows, replicas when it is back
                    return {}
                raise

        async def limits() -> int | None:
            if getattr(self.client, "backend", None) is not None:
                return None  # in-process: the settings are at hand
            try:
                return (await self.client.limits()).MaxReplicas
            except ApiError as exc:
                if exc.status in (404, 405):  # a backend without /limits: keep the default
                    return None
                raise

        services, by_service, max_replicas = await asyncio.gather(self.client.list_services(), replicas(), limits())
        self.post_message(self.Fetched(full_list=services, containers=by_service or {}, max_replicas=max_replicas))
        if by_service is None:
            self.mark_dirty(containers=[s.Name for s in services])

    def on_console_app_fetched(self, message: Fetched) -> None:
        if message.max_replicas is not None and message.max_replicas != self.max_replicas:
            self.max_replicas = message.max_replicas
            limit = message.max_replicas
            self.broadcast(lambda: LimitsChanged(limit))
        if message.full_list is not None:
            self.catalog.replace_all(message.full_list)
            self.broadcast(lambda: ServicesChanged(None))
        changed: set[str] = set()
        for name, service in message.services.items():
            if service is None:
                if name in self.catalog.services:
                    self.catalog.remove(name)
                    changed.add(name)
            else:
                self.catalog.put(service)
                changed.add(name)
        for name, replicas in message.containers.items():
            if name in self.catalog.services:
                self.catalog.containers[name] = replicas
                changed.add(name)
        if changed:
            names = frozenset(changed)
            self.broadcast(lambda: ServicesChanged(names))
        for name in message.containers:
            self.broadcast(partial(ContainersChanged, name))

    def broadcast(self, make: Callable[[], Message]) -> None:
        """Tell every screen on the stack (each gets its own message instance)."""
        for screen in self.screen_stack:
            screen.post_message(make())

    def remember(self, service: Service) -> None:
        """An answer from an action (create, update): show it at once, the stream refines it."""
        self.catalog.put(service)
        self.broadcast(lambda: ServicesChanged(frozenset({service.Name})))
        self.mark_dirty(containers=[service.Name])

    # -- errors ------------------------------------------------------------------------------

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Every notification of the console (screens' and widgets' `notify` end here) as plain text.

        Messages carry service names, typed values and the server's or the engine's words, so they are
        never markup (`markup` is ignored: Textual's `Widget.notify` always passes True) and their control
        characters are shown, not sent to the terminal.
        """
        super().notify(visible(message, newlines=True), title=visible(title), severity=severity, timeout=timeout,
                       markup=False)

    def report_error(self, error: BaseException | None, title: str | None = None) -> None:
        if isinstance(error, ApiError):
            heading = title or ("Backend unreachable" if error.status == 0 else f"Error {error.status}")
            self.notify(error.message, title=heading, severity="error", timeout=10)
        elif error is not None:
            self.notify(f"{error.__class__.__name__}: {error}", title=title or "Error", severity="error", timeout=10)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.report_error(event.worker.error)

    # -- actions and commands ----------------------------------------------------------------

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        from tui.commands import console_commands

        yield from console_commands(self, screen)
        yield from super().get_system_commands(screen)
