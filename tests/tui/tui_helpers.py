"""Helpers of the console's tests: typing into a control, the create form, reading the services table, waiting."""

from __future__ import annotations

import httpx
from textual.pilot import Pilot
from textual.widgets import DataTable

from backend.core import Backend
from tests.conftest import eventually
from tui.app import ConsoleApp
from tui.client import ApiClient
from tui.screens.create import CreateServiceScreen
from tui.screens.services import ServicesScreen


async def type_into(pilot: Pilot, selector: str, text: str, clear: bool = True) -> None:
    """Focus the control and type `text` the way a person does (key by key)."""
    widget = pilot.app.screen.query_one(selector)
    widget.focus()
    await pilot.pause()
    if clear and getattr(widget, "value", ""):
        widget.value = ""  # type: ignore[attr-defined]
    for char in text:
        await pilot.press(char if char != " " else "space")
    await pilot.pause()


async def open_form(pilot: Pilot) -> CreateServiceScreen:
    """From the services list, `n` opens the create form."""
    await pilot.pause()
    await pilot.press("n")
    await pilot.pause()
    assert isinstance(pilot.app.screen, CreateServiceScreen)
    return pilot.app.screen


async def fill(pilot: Pilot, **values: str) -> None:
    """Type each value into the control of that id (a form field's name), in the order given."""
    for field, value in values.items():
        await type_into(pilot, f"#{field}", value)


async def submit_form(pilot: Pilot, name: str) -> None:
    """`ctrl+s` on a filled create form: it closes and the new service's row is in the list."""
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ServicesScreen), 30, "the form to close")
    await wait_for(pilot, lambda: name in pilot.app.screen.query_one("#services").rows, 10, "the new row")


def recording_client(backend: Backend) -> tuple[ApiClient, list[str]]:
    """An in-process client of `backend` and the requests it sends, as they are sent ("GET /services")."""
    requests: list[str] = []
    client = ApiClient.in_process(backend)

    async def record(request: httpx.Request) -> None:
        requests.append(f"{request.method} {request.url.path}")

    client.http.event_hooks["request"].append(record)
    return client, requests


def cell(pilot: Pilot, table_id: str, row: str, column: str) -> str:
    table = pilot.app.screen.query_one(table_id, DataTable)
    value = table.get_cell(row, column)
    return getattr(value, "plain", str(value))


def settled(app: ConsoleApp) -> bool:
    """Nothing more will be fetched unless something happens: no coalesced refetch pending and no
    worker running but the one following /events."""
    return not app._flush_scheduled and all(w.is_finished for w in app.workers if w.group != "events")


async def wait_for(pilot: Pilot, check, timeout: float = 60.0, what: str = ""):
    async def probe():
        await pilot.pause()
        return check()

    return await eventually(probe, timeout, interval=0.05, what=what)
