"""The service view against the real backend and Docker engine: replicas listed live, scale and
delete from their keys."""

from __future__ import annotations

from textual.widgets import DataTable
from tui_helpers import cell, type_into, wait_for

from tests.conftest import wait_status, web_body
from tui.app import ConsoleApp
from tui.screens.delete import DeleteDialog
from tui.screens.prompt import PromptDialog
from tui.screens.service import ServiceScreen
from tui.screens.services import ServicesScreen


def replica_rows(app: ConsoleApp) -> int:
    return app.screen.query_one("#containers", DataTable).row_count


async def test_scale_and_delete_from_the_service_view(backend, api):
    assert (await api.post("/services/create", json=web_body("svc", 1))).status_code == 201
    await wait_status(api, "svc", "active", 60)
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "svc" in app.screen.query_one("#services").rows, 10, "the row")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ServiceScreen)
        await wait_for(pilot, lambda: replica_rows(app) == 1, 20, "one replica listed")
        assert cell(pilot, "#containers", app.screen.query_one("#containers").coordinate_to_cell_key((0, 0)).row_key,
                    "State") == "running"

        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, PromptDialog)
        await type_into(pilot, "#Replicas", "0")
        assert "at least 1" in str(app.screen.query_one("#Replicas-error").content)
        await pilot.press("enter")  # refused: the dialog stays
        assert isinstance(app.screen, PromptDialog)
        await type_into(pilot, "#Replicas", "3")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ServiceScreen)
        await wait_for(pilot, lambda: replica_rows(app) == 3, 60, "three replicas listed live")
        assert backend.get("svc").Replicas == 3
        await wait_for(pilot, lambda: app.catalog.services["svc"].Status == "active", 60, "svc active again")

        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, DeleteDialog)
        await pilot.click("#delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ServicesScreen), 60, "back on the list once deleted")
        await wait_for(pilot, lambda: "svc" not in app.screen.query_one("#services").rows, 10, "the row gone")
        assert backend.list_services() == []
        engine = backend.driver.client
        label = f"io.hyperservice.tenant={backend.tenant}"
        assert engine.containers.list(all=True, filters={"label": label}) == []  # not kept: removed
