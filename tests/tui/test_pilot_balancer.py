"""The service view's Balancer tab (key 5) on the fake client: fronts on top, one row per replica with
its traffic bar, re-read about once a second while the tab is shown and never while it is hidden.
(The numbers themselves come from the real balancer in tests/test_balancer_view.py.)"""

from __future__ import annotations

from fakes import fake_app, sample_balancer
from textual.widgets import DataTable, Static, TabbedContent
from tui_helpers import wait_for

from tui.formatting import traffic_bar
from tui.screens.service import ServiceScreen
from tui.widgets.service.balancer_pane import BAR_WIDTH, REFRESH_SECONDS


def reads(app) -> int:
    return sum(1 for call in app.client.calls if call == "balancer web")


async def wait_refresh_periods(pilot, count: int) -> None:
    """Until `count` refresh periods have passed, as counted by a timer of the same period: a pane
    timer that was running would have ticked as often (on a busy machine too, where a fixed sleep
    may end before a late tick)."""
    ticks = []
    witness = pilot.app.screen.set_interval(REFRESH_SECONDS, lambda: ticks.append(1))
    try:
        await wait_for(pilot, lambda: len(ticks) >= count, 30 + count * REFRESH_SECONDS, f"{count} refresh periods")
    finally:
        witness.stop()


async def test_balancer_tab_shows_shares_and_refreshes_only_while_shown():
    app = fake_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "web" in app.screen.query_one("#services").rows, 10, "the row")
        app.screen.query_one("#services", DataTable).move_cursor(row=app.screen.query_one("#services").get_row_index("web"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ServiceScreen)
        await wait_refresh_periods(pilot, 2)
        assert reads(app) == 0  # not read while another tab is shown

        await pilot.press("5")
        assert app.screen.query_one(TabbedContent).active == "balancer"
        table = app.screen.query_one("#balancer-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 3, 10, "three replicas")
        assert app.focused is table
        expected = sample_balancer(app.catalog.services["web"])
        for replica in expected.Replicas:
            row = [getattr(c, "plain", str(c)) for c in table.get_row(replica.Slot)]
            assert row[0] == replica.Replica and row[1] == replica.State
            assert row[2].startswith(traffic_bar(replica.Share, BAR_WIDTH))
        fronts = str(app.screen.query_one("#balancer-fronts", Static).content)
        assert f"address {expected.Fronts[0].Address}" in fronts and f"{expected.Fronts[0].Total} total" in fronts

        first = reads(app)
        await wait_for(pilot, lambda: reads(app) >= first + 2, 10, "re-read while shown")

        await pilot.press("4")  # another tab: the reading stops
        await pilot.pause()
        stopped = reads(app)
        await wait_refresh_periods(pilot, 3)
        assert reads(app) == stopped

        await pilot.press("5")  # back: read at once, and again
        await wait_for(pilot, lambda: reads(app) >= stopped + 2, 10, "re-read when shown again")
