"""The service view's Events tab against the real backend and Docker engine: a replica too big for its
ContainerSize is OOM-killed, the tab names it with the grouped cause on top, and an operator's action
made elsewhere shows up live (the change feed's `history` event, no key pressed, no polling)."""

from __future__ import annotations

from textual.widgets import DataTable, Static, TabbedContent
from tui_helpers import wait_for

from tests.conftest import web_body
from tests.test_history import HOG
from tui.app import ConsoleApp
from tui.screens.service import ServiceScreen


def rows(app: ConsoleApp) -> list[tuple[str, ...]]:
    """The events table as text, newest first: (When, Replica, Event, Details)."""
    table = app.screen.query_one("#events-table", DataTable)
    return [tuple(getattr(c, "plain", str(c)) for c in table.get_row_at(i)) for i in range(table.row_count)]


def summary(app: ConsoleApp) -> str:
    return str(app.screen.query_one("#events-summary", Static).content)


async def test_events_tab_names_the_oom_kill_with_its_cause_on_top_and_follows_live(backend, api):
    assert (await api.post("/services/create", json=web_body("hog", 1, ContainerSize="s1", Cmd=HOG))).status_code == 201
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "hog" in app.screen.query_one("#services").rows, 10, "the row")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ServiceScreen)
        await pilot.press("4")
        await pilot.pause()
        assert app.screen.query_one(TabbedContent).active == "events"
        assert app.focused is app.screen.query_one("#events-table")  # the keys scroll the history at once

        await wait_for(pilot, lambda: any(r[2] == "OOM kill" for r in rows(app)), 60, "an OOM kill listed")
        kill = next(r for r in rows(app) if r[2] == "OOM kill")
        replicas = {c["Name"] for c in (await api.get("/services/hog/containers")).json()}
        assert kill[1] in replicas and kill[3] == f"{kill[1]} was OOM-killed (exit code 137)"
        await wait_for(pilot, lambda: summary(app).startswith("▲ 1 replica OOM-killed"), 30, "the cause on top")
        assert f"in the last 5 min — {kill[1]}" in summary(app).splitlines()[0]
        assert rows(app)[-1][2:] == ("create", "created: hyperservice-test/web:1, 1 replica, size s1 · by local")

        # Live: an action taken elsewhere (here the API) appears without a key pressed.
        assert (await api.post("/services/hog/update", json={"Replicas": 2})).status_code == 200
        await wait_for(pilot, lambda: any(r[2:] == ("scale", "scale from 1 to 2 replicas · by local") for r in rows(app)),
                       20, "the scale action listed live")
