"""`hyperservice serve`: the same API over TCP, loopback by default, with an optional token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from backend.server import DEFAULT_LISTEN, is_loopback, parse_listen
from tests.conftest import LB_IMAGE, wait_status, web_body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path, docker_client):
    port = free_port()
    env = {**os.environ, "HYPERSERVICE_DATA_DIR": str(tmp_path / "data"), "HYPERSERVICE_LB_IMAGE": LB_IMAGE}
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--listen", f"127.0.0.1:{port}", "--token", "s3cret"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # a poll with a deadline: the daemon answers, or the fixture fails saying why
        try:
            httpx.get(url + "/openapi.json", headers={"authorization": "Bearer s3cret"}, timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.communicate(timeout=30)[0].decode()
                pytest.fail(f"`hyperservice serve` did not answer within 30 s:\n{output[-2000:]}")
            time.sleep(0.1)
    try:
        yield url
    finally:
        with httpx.Client(base_url=url, headers={"authorization": "Bearer s3cret"}) as client:
            for service in client.get("/services").json():
                client.delete(f"/services/{service['Name']}")
            deadline = time.monotonic() + 60  # DELETE answers at once; the teardown takes a moment
            while client.get("/services").json() and time.monotonic() < deadline:
                time.sleep(0.2)
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
        assert "BEGIN" not in output  # no key material in the daemon's log


def test_default_listen_is_loopback():
    host, port = parse_listen(DEFAULT_LISTEN)
    assert (host, port) == ("127.0.0.1", 8765) and is_loopback(host)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8765", "host:", "host:99999", "host:http"):
        with pytest.raises(ValueError):
            parse_listen(bad)


async def test_serve_answers_over_tcp_and_requires_its_token(served):
    async with httpx.AsyncClient(base_url=served, timeout=30) as anonymous:
        response = await anonymous.get("/services")
        assert response.status_code == 401 and "token" in response.json()["message"]
    async with httpx.AsyncClient(base_url=served, headers={"authorization": "Bearer s3cret"}, timeout=30) as api:
        assert (await api.get("/services")).json() == []
        created = await api.post("/services/create", json=web_body("remote", 1))
        assert created.status_code == 201
        service = await wait_status(api, "remote", "active")
        assert len(service["Containers"]) == 1
        assert "paths" in (await api.get("/openapi.json")).json()


def test_serve_refuses_a_bad_listen_address():
    result = subprocess.run([sys.executable, "-m", "tui.cli", "serve", "--listen", "nowhere"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def test_a_second_daemon_on_the_same_data_dir_refuses_to_start_naming_the_first(served, tmp_path):
    holder = (tmp_path / "data" / "backend.lock").read_text().strip()
    env = {**os.environ, "HYPERSERVICE_DATA_DIR": str(tmp_path / "data"), "HYPERSERVICE_LB_IMAGE": LB_IMAGE}
    second = subprocess.run(
        [sys.executable, "-m", "tui.cli", "serve", "--listen", f"127.0.0.1:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1
    assert f"in use by another hyperservice backend (pid {holder})" in second.stderr
    assert "Traceback" not in second.stderr
    assert httpx.get(served + "/services", headers={"authorization": "Bearer s3cret"}).status_code == 200
