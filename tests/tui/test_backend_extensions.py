"""The console's use of the backend's extension routes, on fixed data (fakes.FakeClient), fast:
`/replicas` at start-up (and the fallback for a backend without it), `/limits` reaching an open form,
a health event shown at once, and the floating IP dialog's keys. The same on the real engine:
test_pilot_live_data.py."""

from __future__ import annotations

from fakes import NOW, FakeClient, fake_app
from textual.widgets import DataTable, Input
from tui_helpers import settled, wait_for

from tui.app import ConsoleApp
from tui.client import ApiError, Limits
from tui.screens.create import CreateServiceScreen
from tui.screens.fip import Choices, FloatingIPDialog


async def test_one_replicas_call_at_start_up_not_one_per_service():
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.catalog.containers.keys() == {"api", "cache", "web", "worker"}, 5, "replicas")
        await wait_for(pilot, lambda: settled(app), 5, "no fetch pending")  # whatever start-up asks, it has asked
        assert app.client.calls == ["all_replicas"]  # type: ignore[attr-defined]
        assert str(app.screen.query_one("#services", DataTable).get_cell("web", "Up")) == "2/3"


async def test_a_backend_without_replicas_route_is_read_one_service_at_a_time():
    client = FakeClient()

    async def missing():
        raise ApiError(404, "Not Found")

    client.all_replicas = missing  # type: ignore[method-assign]
    app = ConsoleApp(client=client, clock=lambda: NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: len(app.catalog.containers) == 4, 5, "replicas, one call each")
        assert sorted(client.calls) == ["containers api", "containers cache", "containers web", "containers worker"]


async def test_the_remote_limit_reaches_an_open_form():
    client = FakeClient()
    held = __import__("asyncio").Event()

    async def limits():
        await held.wait()
        return Limits(MaxReplicas=7)

    client.limits = limits  # type: ignore[method-assign]
    app = ConsoleApp(client=client, clock=lambda: NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, CreateServiceScreen), 10, "the form")
        assert "1-100" in str(app.screen.query_one("#Replicas-note").content)
        held.set()  # the answer to GET /limits arrives while the form is open
        await wait_for(pilot, lambda: "1-7" in str(app.screen.query_one("#Replicas-note").content), 5, "the new help")
        assert app.max_replicas == 7


async def test_a_health_event_shows_at_once():
    import asyncio

    client = FakeClient()

    async def slow_containers(name: str):
        await asyncio.Event().wait()  # the refetch the event triggers never answers here

    client.containers = slow_containers  # type: ignore[method-assign]
    app = ConsoleApp(client=client, clock=lambda: NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("down", "down", "enter")  # web
        await wait_for(pilot, lambda: app.screen.query_one("#containers", DataTable).row_count == 3, 5, "replicas")
        replica = app.catalog.containers["web"][0]
        # What shows is the event's own news, not a re-read of the replicas.
        app.post_message(ConsoleApp.BackendEvent({"Type": "container", "Action": "health", "Service": "web",
                                                  "Id": replica.Id, "Name": replica.Name, "Health": "DOWN"}))
        table = app.screen.query_one("#containers", DataTable)
        await wait_for(pilot, lambda: table.get_cell(replica.Id, "Health").plain == "DOWN 0s", 2, "DOWN 0s")
        assert "1/3 up" in str(app.screen.query_one("#summary").content)


async def test_fip_dialog_keys_walk_the_pool_and_keep_typing():
    app = fake_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "down", "f")  # web: none attached
        await wait_for(pilot, lambda: isinstance(app.screen, FloatingIPDialog) and app.screen.query_one(Choices)
                       .option_count, 5, "the pool")
        box = app.screen.query_one("#FIP", Input)
        assert app.focused is box  # typing goes straight into the address
        await pilot.press("down")
        assert box.value == "192.0.2.10"
        await pilot.press("down")  # 192.0.2.11 is on cache: skipped
        assert box.value == "192.0.2.12"
        await pilot.press("up")
        assert box.value == "192.0.2.10"
        assert "Apply attaches 192.0.2.10" in str(app.screen.query_one("#FIP-note").content)
        await pilot.press("1")  # typing replaces nothing but what the box holds: a typed address stays possible
        assert box.value == "192.0.2.101"
        assert "not in the backend's pool" in str(app.screen.query_one("#FIP-note").content)
        await pilot.press("escape")
        assert not isinstance(app.screen, FloatingIPDialog)
