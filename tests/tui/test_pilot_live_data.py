"""What the backend tells the console beyond the service objects, on the real backend and engine:

1. CPU / memory per replica from `GET /services/{name}/stats` (read only while a service view is open,
   reopened when the replica set changes);
2. health changes from `/events`, shown with since-when in the replicas table, no key pressed;
3. every service's replicas from one `GET /replicas` at start-up;
5. the floating IP dialog offering the pool (`GET /fips`) and attaching / detaching;
6. the create form validating Replicas against the remote backend's `GET /limits`.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading

import httpx
import pytest
import uvicorn
from textual.widgets import DataTable, Input
from tui_helpers import cell, recording_client, type_into, wait_for

from tests.conftest import eventually, make_settings, web_body
from tui.app import ConsoleApp
from tui.screens.create import CreateServiceScreen
from tui.screens.fip import Choices, FloatingIPDialog
from tui.screens.service import ServiceScreen
from tui.screens.services import ServicesScreen

FAST_CHECKS = {"HealthCheckInterval": 1, "HealthCheckFall": 2, "HealthCheckRise": 2}
MAX_REPLICAS = 7


@pytest.fixture
def settings(tmp_path):
    # A floating IP pool of our own (a random 127.x.y block) and a small replica limit to see.
    block = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"
    return make_settings(tmp_path / "data", fip_pool=f"{block}.200,{block}.201", max_replicas=MAX_REPLICAS)


async def create_active(api: httpx.AsyncClient, name: str, replicas: int = 1, **fields) -> dict:
    response = await api.post("/services/create", json=web_body(name, replicas, **fields))
    assert response.status_code == 201, response.text
    return await wait_active(api, name)


async def wait_active(api: httpx.AsyncClient, name: str, timeout: float = 90) -> dict:
    """Like conftest's wait_status, but a timeout says where the service got stuck."""
    seen: list[str] = []

    async def check():
        body = (await api.get(f"/services/{name}")).json()
        state = f"{body.get('Status')}: {body.get('Message')}"
        if not seen or seen[-1] != state:
            seen.append(state)
        return body if body.get("Status") == "active" else None

    try:
        return await eventually(check, timeout, what=f"{name} to be active")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; states seen: {seen}") from None


def replica_cells(app: ConsoleApp, column: str) -> dict[str, str]:
    table = app.screen.query_one("#containers", DataTable)
    return {str(key.value): str(getattr(table.get_cell(key, column), "plain", table.get_cell(key, column)))
            for key in table.rows}


async def open_service(pilot, app: ConsoleApp, name: str) -> None:
    await wait_for(pilot, lambda: name in app.screen.query_one("#services").rows, 20, f"the row of {name}")
    app.screen.query_one("#services").select_name(name)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ServiceScreen), 5, "the service view")


def stats_threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"follow-{prefix}")]


# -- 1. CPU and memory ---------------------------------------------------------------------------


async def test_cpu_and_memory_columns_come_from_the_stats_stream(backend, api):
    await create_active(api, "stats", 1, ContainerSize="s2")
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.catalog.containers.get("stats"), 20, "the replicas")
        assert not stats_threads("stats-")  # nothing is sampled while no service view is open
        await open_service(pilot, app, "stats")

        def numbers() -> bool:
            cpu, memory = replica_cells(app, "CPU"), replica_cells(app, "Memory")
            return bool(cpu) and all(re.fullmatch(r"\d+(\.\d)?%", v) for v in cpu.values()) and all(
                re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)", v) for v in memory.values())

        await wait_for(pilot, numbers, 20, "CPU and memory figures of the replica")
        (sample,) = app.screen.stats.values()  # type: ignore[attr-defined]
        assert sample.MemoryLimit == 128 * 2**20 and 0 < sample.MemoryBytes < sample.MemoryLimit

        # The replica set changes: the stream is reopened and the new replica gets figures too.
        assert (await api.post("/services/stats/update", json={"Replicas": 2})).status_code == 200
        await wait_for(pilot, lambda: len(replica_cells(app, "CPU")) == 2 and numbers(), 60,
                       "figures for both replicas")

        # Wide: memory also says of how much.
        await pilot.resize_terminal(200, 50)
        await wait_for(pilot, lambda: all("/ 128 MiB" in v for v in replica_cells(app, "Memory").values()), 10,
                       "memory with its limit")

        await pilot.press("escape")  # leaving the view closes the stream (no sampling in the background)
        await wait_for(pilot, lambda: isinstance(app.screen, ServicesScreen), 5, "the list")
        await wait_for(pilot, lambda: not stats_threads("stats-"), 15, "the backend's stats readers to end")


async def test_dashes_until_the_first_sample():
    import fakes

    release = asyncio.Event()
    client = fakes.FakeClient()

    async def slow_stats(name: str):
        await release.wait()
        for sample in fakes.sample_stats(await client.get_service(name)):
            yield sample
        await asyncio.Event().wait()

    client.stats = slow_stats  # type: ignore[method-assign]
    app = ConsoleApp(client=client, clock=lambda: fakes.NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await open_service(pilot, app, "web")
        await wait_for(pilot, lambda: len(replica_cells(app, "CPU")) == 3, 5, "the replicas")
        assert set(replica_cells(app, "CPU").values()) == {"—"} and set(replica_cells(app, "Memory").values()) == {"—"}
        release.set()
        await wait_for(pilot, lambda: "37.5%" in replica_cells(app, "CPU").values(), 5, "the samples")
        assert sorted(replica_cells(app, "Memory").values()) == ["3.2 MiB", "48.7 MiB", "—"]


async def test_an_engine_without_stats_gets_a_one_line_note_and_is_not_asked_again():
    # The swarm engine answers 400 on /stats (a task's figures stay on its node's engine).
    import fakes

    from tui.client import ApiError
    from tui.screens.service import STATS_REFUSED_NOTE

    client = fakes.FakeClient()
    asked: list[str] = []

    async def refused_stats(name: str):
        asked.append(name)
        raise ApiError(400, "stats are not available on the swarm engine: ...")
        yield  # an async generator, as the real one

    client.stats = refused_stats  # type: ignore[method-assign]
    app = ConsoleApp(client=client, clock=lambda: fakes.NOW)
    async with app.run_test(size=(160, 24)) as pilot:
        await pilot.pause()
        await open_service(pilot, app, "web")
        summary = app.screen.query_one("#summary")
        await wait_for(pilot, lambda: STATS_REFUSED_NOTE in str(summary.render()), 5, "the no-stats note")
        assert isinstance(app.screen, ServiceScreen) and set(replica_cells(app, "CPU").values()) == {"—"}
        app.screen.follow_stats_if_needed()  # what a change of the replicas does
        await pilot.pause()
        assert asked == ["web"]


# -- 2. health -----------------------------------------------------------------------------------


async def test_a_replica_going_down_shows_in_the_table_with_no_key_pressed(backend, api):
    await create_active(api, "checked", 2, Protocol="http", **FAST_CHECKS)
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_service(pilot, app, "checked")
        await wait_for(pilot, lambda: [v.split()[0] for v in replica_cells(app, "Health").values()] == ["UP", "UP"],
                       30, "both replicas UP")
        assert all(re.fullmatch(r"UP \d+[smh].*", v) for v in replica_cells(app, "Health").values())  # with since-when
        victim = sorted(replica_cells(app, "Health"))[0]
        engine = backend.driver.client
        result = await asyncio.to_thread(engine.containers.get(victim).exec_run, ["rm", "/www/index.html"])
        assert result.exit_code == 0, result.output
        # (how soon, fall 2 × interval 1 s plus the event, is bench/'s business)
        await wait_for(pilot, lambda: replica_cells(app, "Health")[victim].startswith("DOWN"), 15, "DOWN shown")
        assert re.fullmatch(r"DOWN \d+s", replica_cells(app, "Health")[victim])
        assert "1/2 up" in str(app.screen.query_one("#summary").content)
        # and back: the file returns, the balancer sees it UP again
        await asyncio.to_thread(engine.containers.get(victim).exec_run, ["sh", "-c", "echo back > /www/index.html"])
        await wait_for(pilot, lambda: replica_cells(app, "Health")[victim].startswith("UP"), 15, "UP again")


# -- 3. all replicas in one call -----------------------------------------------------------------


async def test_start_up_reads_every_replica_with_one_request(backend, api):
    for name in ("one", "two", "three"):
        assert (await api.post("/services/create", json=web_body(name, 1))).status_code == 201
    for name in ("one", "two", "three"):
        await wait_active(api, name)
    client, requests = recording_client(backend)
    app = ConsoleApp(backend=backend, client=client)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: all(name in app.screen.query_one("#services").rows
                                          and cell(pilot, "#services", name, "Up") == "1/1"
                                          for name in ("one", "two", "three")), 20, "every Up count")
        at_start = list(requests)
    await client.aclose()
    assert at_start.count("GET /replicas") == 1, at_start
    assert not [r for r in at_start if r.endswith("/containers")], at_start  # not one call per service
    assert "GET /services" in at_start and "GET /limits" not in at_start  # in-process: limits are at hand


# -- 5. floating IPs -----------------------------------------------------------------------------


def choices(app: ConsoleApp) -> list[tuple[str, bool]]:
    options = app.screen.query_one(Choices)
    return [(str(options.get_option_at_index(i).prompt), options.get_option_at_index(i).disabled)
            for i in range(options.option_count)]


async def test_the_fip_dialog_offers_the_pool_and_attaches(backend, api):
    free, taken = backend.settings.fip_addresses
    await create_active(api, "front", 1)
    await create_active(api, "holder", 1)
    assert (await api.post("/services/holder/update", json={"FIP": taken})).status_code == 200
    app = ConsoleApp(backend=backend)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: "front" in app.screen.query_one("#services").rows, 20, "the row")
        app.screen.query_one("#services").select_name("front")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FloatingIPDialog) and choices(app), 10, "the pool")
        assert choices(app) == [(f"{free}  free", False), (f"{taken}  on holder", True)]
        await pilot.press("down")  # the first free address goes into the box
        assert app.screen.query_one("#FIP", Input).value == free
        await pilot.press("down")  # the taken one is skipped: wraps to the free one again
        assert app.screen.query_one("#FIP", Input).value == free
        await pilot.press("enter")
        await wait_for(pilot, lambda: free == app.catalog.services["front"].FIP, 20, "the FIP attached")
        await wait_for(pilot, lambda: free in cell(pilot, "#services", "front", "Address"), 5, "shown in the list")
        assert {f["Address"]: f["Service"] for f in (await api.get("/fips")).json()} == {free: "front", taken: "holder"}
        await wait_active(api, "front")

        # Detach, from the dialog's own choice.
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FloatingIPDialog) and choices(app), 10, "the pool again")
        assert (f"{free}  attached here", False) in choices(app) and choices(app)[-1][0].startswith(f"Detach {free}")
        await pilot.press("up")  # from the bottom: Detach
        assert app.screen.query_one("#FIP", Input).value == ""
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.catalog.services["front"].FIP == "", 20, "the FIP detached")

        # A typed address is still taken as typed: the backend says what is wrong with it.
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FloatingIPDialog) and choices(app), 10, "the dialog")
        await type_into(pilot, "#FIP", "192.0.2.77")
        assert "not in the backend's pool" in str(app.screen.query_one("#FIP-note").content)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("not in the floating IP pool" in str(n.message) for n in app._notifications),
                       10, "the server's 400 as a notification")


# -- 6. limits for a remote console --------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_remote_console_validates_replicas_against_the_backends_limit(backend):
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(__import__("backend.api", fromlist=["create_app"]).create_app(backend),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        await eventually(lambda: server.started, 10, 0.05, "the API server to start")
        app = ConsoleApp(api_url=f"http://127.0.0.1:{port}")
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.max_replicas == MAX_REPLICAS, 10, "the backend's limit")
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, CreateServiceScreen), 10, "the form")
            await pilot.pause()
            assert f"1-{MAX_REPLICAS}" in str(app.screen.query_one("#Replicas-note").content)
            await type_into(pilot, "#Replicas", str(MAX_REPLICAS + 1))
            note = str(app.screen.query_one("#Replicas-note").content)
            assert f"at most {MAX_REPLICAS}" in note, note  # as typed, before any request
            await type_into(pilot, "#Replicas", str(MAX_REPLICAS))
            assert "✗" not in str(app.screen.query_one("#Replicas-note").content)
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)
