"""The command palette (ctrl+p): every action of the console, and "Open service <name>".

`console_commands` yields the actions that make sense on the current screen (the app adds Textual's
own system commands after them); `ServiceCommands` lists the services to open by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

from textual.app import SystemCommand
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.markup import escape
from textual.screen import Screen

from tui.formatting import plain, visible

if TYPE_CHECKING:
    from tui.app import ConsoleApp


def console_commands(app: ConsoleApp, screen: Screen) -> Iterable[SystemCommand]:
    from tui.screens.create import CreateServiceScreen
    from tui.screens.service import ServiceScreen
    from tui.screens.services import ServicesScreen

    yield SystemCommand("Help: keys", "Every key of the console (?)", app.action_help)
    if isinstance(screen, ServicesScreen):
        yield SystemCommand("New service", "Open the create form (n)", screen.action_new_service)
        yield SystemCommand("Open service", "Open the highlighted service (enter)", screen.action_open)
        yield SystemCommand("Filter services", "Filter the table (/)", screen.action_filter)
        yield SystemCommand("Show message", "The highlighted service's whole message (m)", screen.action_message)
    if isinstance(screen, ServicesScreen | ServiceScreen):
        yield SystemCommand("Scale service", "Change the number of replicas (s)", screen.action_scale)
        yield SystemCommand("Update image", "Rolling update to a new image (u)", screen.action_update_image)
        yield SystemCommand("Floating IP", "Attach or detach a floating IP (f)", screen.action_floating_ip)
        yield SystemCommand("Delete service", "Delete, optionally keeping its containers (d)", screen.action_delete)
        yield SystemCommand("Copy address", "Copy the service's address to the clipboard (a)", screen.action_copy_address)
    if isinstance(screen, ServiceScreen):
        yield SystemCommand("Copy container id", "Copy the highlighted replica's id (c)", screen.action_copy_id)
        yield SystemCommand("Logs", "Logs of the highlighted replica (l)", screen.action_logs)
        yield SystemCommand("Search logs", "Search the log pane (/)", screen.action_search_logs)
        yield SystemCommand("Events", "The service's history, and why replicas died (4)", screen.action_events)
        yield SystemCommand("Back to services", "Leave this service (escape)", screen.action_back)
    if isinstance(screen, CreateServiceScreen):
        yield SystemCommand("Create service", "Submit the form (ctrl+s)", screen.action_submit)
        yield SystemCommand("Cancel", "Leave the form (escape)", screen.action_cancel)
    yield SystemCommand("Quit", "Leave the console (q)", app.action_quit)


class ServiceCommands(Provider):
    """"Open service <name>" for every service the console knows."""

    def _open(self, name: str) -> None:
        from tui.screens.service import ServiceScreen

        app = self.app
        while len(app.screen_stack) > 1 and isinstance(app.screen, ServiceScreen):
            app.pop_screen()
        app.push_screen(ServiceScreen(name))

    def _names(self) -> list[str]:
        from tui.app import ConsoleApp

        app = self.app  # typed App[object] by Textual's Provider; the console's app in practice
        return sorted(app.catalog.services) if isinstance(app, ConsoleApp) else []

    async def discover(self) -> Hits:
        for name in self._names():
            yield DiscoveryHit(plain(f"Open service {name}"), partial(self._open, name), help="Its replicas, logs and spec")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name in self._names():
            text = visible(f"Open service {name}")
            score = matcher.match(text)
            if score > 0:  # highlight() parses its argument as markup: the name is escaped
                yield Hit(score, matcher.highlight(escape(text)), partial(self._open, name),
                          help="Its replicas, logs and spec")
