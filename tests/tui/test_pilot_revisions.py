"""The service view's Revisions tab and its rollback key, on fixed data (fakes.FakeClient): the list
as the backend sends it, `r` asks first, then rolls back to the highlighted revision (elsewhere: to
the last good one, the backend's choice); cancel changes nothing."""

from __future__ import annotations

from fakes import fake_app
from textual.widgets import DataTable, TabbedContent
from tui_helpers import wait_for

from tui.screens.rollback import RollbackDialog
from tui.screens.service import ServiceScreen


def rows(app) -> list[tuple[str, ...]]:
    table = app.screen.query_one("#revisions-table", DataTable)
    return [tuple(getattr(c, "plain", str(c)) for c in table.get_row_at(i)) for i in range(table.row_count)]


async def test_revisions_tab_lists_them_and_r_rolls_back_after_confirming():
    app = fake_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "api" in app.screen.query_one("#services").rows, 10, "the row")
        await pilot.press("enter")  # the first row: api
        await pilot.pause()
        assert isinstance(app.screen, ServiceScreen)
        service = app.screen
        await pilot.press("6")
        assert service.query_one(TabbedContent).active == "revisions"
        await wait_for(pilot, lambda: len(rows(app)) == 4, 10, "four revisions listed")
        assert app.focused is service.query_one("#revisions-table")
        listed = rows(app)
        assert [r[0] for r in listed] == ["4", "3", "2", "1"]  # newest first
        assert listed[0][1] == app.client.services["api"].Image and listed[0][4] == "active"
        assert listed[1][3] == "local" and listed[1][4].startswith("rolled back")
        assert "kept exiting (code 1)" in listed[1][4]
        assert "revisions api" in app.client.calls

        await pilot.press("down", "down", "r")  # revision 2
        await pilot.pause()
        assert isinstance(app.screen, RollbackDialog) and app.screen.target.Number == 2
        await pilot.press("escape")  # cancel: nothing asked
        await pilot.pause()
        assert app.screen is service and not any(c.startswith("rollback") for c in app.client.calls)

        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: "rollback api 2" in app.client.calls, 10, "the rollback asked")

        await pilot.press("1", "r")  # on another tab: the last good revision, as the backend picks it
        await pilot.pause()
        assert isinstance(app.screen, RollbackDialog) and app.screen.target is None
        await pilot.press("y")
        await wait_for(pilot, lambda: "rollback api None" in app.client.calls, 10, "the default rollback asked")
