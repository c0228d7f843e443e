"""Helpers of the console's tests: typing into a control, reading the services table, waiting."""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import DataTable

from tests.conftest import eventually
from tui.app import ConsoleApp


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
