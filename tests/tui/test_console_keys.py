"""Keys, help, palette, filter, clipboard and error notifications — on fixed data (fakes.FakeClient),
fast; plus a change made elsewhere showing live, on the real backend."""

from __future__ import annotations

from fakes import FakeClient, fake_app
from textual.widgets import DataTable
from tui_helpers import recording_client, settled, wait_for

from tests.conftest import web_body
from tui.app import ConsoleApp
from tui.client import ApiError
from tui.screens.help import KEYS, HelpScreen
from tui.screens.message import MessageScreen
from tui.screens.service import ServiceScreen


def rows(app) -> list[str]:
    return [str(key.value) for key in app.screen.query_one("#services", DataTable).rows]


async def test_filter_narrows_the_table_and_escape_clears_it():
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert sorted(rows(app)) == ["api", "cache", "web", "worker"]
        await pilot.press("slash", "w")
        await pilot.pause()
        assert sorted(rows(app)) == ["web", "worker"]  # names (and images, messages) containing "w"
        await pilot.press("e", "b")
        await pilot.pause()
        assert rows(app) == ["web"]
        await pilot.press("escape")
        await pilot.pause()
        assert len(rows(app)) == 4


async def test_the_untruncated_message_is_one_key_away():
    app = fake_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.query_one("#services").selected_name() == "api"
        full = app.catalog.services["api"].Message
        assert len(full) > 80
        assert full in str(app.screen.query_one("#detail").content)  # under the table, whole
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, MessageScreen)
        assert str(app.screen.query_one("#message-text").content) == full
        await pilot.press("c")
        assert app.clipboard == full


async def test_help_lists_every_key_of_the_contract():
    app = fake_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        listed = " / ".join(key for _, keys in KEYS for key, _ in keys).split(" / ")
        for key in ("n", "enter", "/", "s", "u", "f", "d", "?", "q", "ctrl+s", "escape", "c", "a", "m", "l"):
            assert key in listed, key
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_every_action_is_in_the_command_palette():
    app = fake_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"New service", "Open service", "Filter services", "Scale service", "Update image", "Floating IP",
                "Delete service", "Help: keys", "Quit", "Copy address"} <= titles
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ServiceScreen)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Scale service", "Update image", "Floating IP", "Delete service", "Copy container id",
                "Search logs", "Back to services"} <= titles


async def test_copy_container_id_and_address():
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "a")  # web
        assert app.clipboard == "127.77.0.1:80"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.query_one("#containers", DataTable).row_count == 3, 5, "replicas")
        await pilot.press("c")
        assert app.clipboard == "we00" * 16  # the full id, not the short one shown


async def test_api_errors_are_notifications_with_the_servers_message():
    client = FakeClient()

    async def refuse(name, **changes):
        raise ApiError(400, "floating IPs are not supported yet")

    client.update_service = refuse  # type: ignore[method-assign]
    app = ConsoleApp(client=client)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("f")
        await pilot.pause()
        for char in "192.0.2.10":
            await pilot.press(char)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("not supported yet" in str(n.message) for n in app._notifications), 5,
                       "the notification")
        note = next(n for n in app._notifications if "not supported yet" in str(n.message))
        assert note.severity == "error" and note.title == "Error 400"


async def test_q_quits():
    app = fake_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_a_change_elsewhere_shows_with_no_key_pressed(backend, api):
    # (how soon is bench/console.py's business: "container change → row updated")
    client, requests = recording_client(backend)
    app = ConsoleApp(backend=backend, client=client)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.catalog.loaded, 10, "the list")
        await wait_for(pilot, lambda: settled(app), 10, "start-up fetches done")
        requests.clear()
        assert (await api.post("/services/create", json=web_body("elsewhere", 1))).status_code == 201
        await wait_for(pilot, lambda: "elsewhere" in rows(app), 10, "the new row")
    await client.aclose()
    # pushed by /events and fetched for that one service: not a re-read of the list, no polling
    assert "GET /services/elsewhere" in requests and "GET /services" not in requests, requests


async def test_a_backend_that_cannot_start_is_said_plainly_not_a_traceback():
    from pathlib import Path

    from backend.settings import Settings

    app = ConsoleApp(settings=Settings(data_dir=Path("/proc/hyperservice-cannot-be-here")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
    assert app.return_code == 1
    assert app._exception is None
    assert "cannot start the in-process backend" in app.start_error and "hyperservice-cannot-be-here" in app.start_error
