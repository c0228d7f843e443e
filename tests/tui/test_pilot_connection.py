"""Starting the console: on an engine that can't be reached it opens anyway, says which DOCKER_HOST it
tried and how to fix it, and recovers by itself when the engine comes back; `--api URL` attaches to
a backend served over HTTP through the same client code."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import uvicorn
from tui_helpers import cell, wait_for

from backend.api import create_app
from backend.core import Backend
from tests.conftest import make_settings, wait_status, web_body
from tui.app import ConsoleApp
from tui.screens.base import Banner


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _proxy(client_reader, client_writer) -> None:
    engine_reader, engine_writer = await asyncio.open_unix_connection("/var/run/docker.sock")
    await asyncio.gather(_pipe(client_reader, engine_writer), _pipe(engine_reader, client_writer))


def banner_text(app: ConsoleApp) -> str:
    banner = app.screen.query_one(Banner)
    return str(banner.content) if banner.display else ""


async def test_engine_unreachable_is_said_and_recovered_from(tmp_path: Path, monkeypatch, docker_client):
    sock = tmp_path / "engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    backend = Backend(make_settings(tmp_path / "data"))
    backend.start()
    server = None
    try:
        app = ConsoleApp(backend=backend)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: "not reachable" in banner_text(app), 20, "the engine banner")
            text = banner_text(app)
            assert str(sock) in text and "DOCKER_HOST" in text and "Start dockerd" in text
            # the engine comes back at that address: the banner goes by itself, no key pressed
            server = await asyncio.start_unix_server(_proxy, path=str(sock))
            await wait_for(pilot, lambda: banner_text(app) == "", 40, "the banner to go")
            assert app.catalog.engine_problem is None
    finally:
        if server is not None:
            server.close()
        await asyncio.to_thread(backend.close)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_attaches_to_a_remote_backend_with_a_token(backend, api):
    assert (await api.post("/services/create", json=web_body("remote", 1))).status_code == 201
    await wait_status(api, "remote", "active", 60)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend, "s3cret"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        await wait_for_port(port)
        app = ConsoleApp(api_url=f"http://127.0.0.1:{port}", token="s3cret")
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: "remote" in app.screen.query_one("#services").rows, 20, "the remote row")
            assert cell(pilot, "#services", "remote", "Status") == "active"
            # the header names the engine the backend chose (this engine is no swarm manager), first
            await wait_for(pilot, lambda: app.sub_title.startswith("docker engine · "), 20, "the engine in the header")
            assert app.sub_title == f"docker engine · http://127.0.0.1:{port}"
            # live over the network too: a change made elsewhere shows up without a key
            await api.post("/services/remote/update", json={"Replicas": 2})
            await wait_for(pilot, lambda: cell(pilot, "#services", "remote", "Up") == "1/2"
                           or cell(pilot, "#services", "remote", "Up") == "2/2", 30, "the new replica count")
        bad = ConsoleApp(api_url=f"http://127.0.0.1:{port}", token="wrong")
        async with bad.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: "token" in banner_text(bad), 20, "the 401 said plainly")
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)


async def wait_for_port(port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")
