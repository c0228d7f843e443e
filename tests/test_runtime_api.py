"""The short path to a balancer's runtime API (backend/runtime_api.py): the client against a loopback
server, the judgement of where the engine is, and on the real engine: commands reach a balancer
without a `docker exec`, a balancer that does not take this path is asked through the engine, and a
backend that adopts balancers made by another reads their secrets once."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from backend import haproxy, runtime_api
from backend.balancer import Balancers
from backend.core import Backend
from backend.docker_driver import ServiceRef
from tests.conftest import backend_to_restart, client_for, make_settings, wait_status, web_body

SECRET = " \t" * (haproxy.ADMIN_SECRET_LENGTH // 2)


@pytest.fixture
def gate() -> Iterator[tuple[int, list[bytes]]]:
    """A one-command loopback server in the runtime API's manner: it answers `echo LINE` with LINE
    when the secret came first, and closes without a word otherwise."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                received.append(data)
                if data.startswith(SECRET.encode()):
                    connection.sendall(data[len(SECRET):].removeprefix(b"echo ") + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    server.close()


def test_ask_sends_the_secret_then_the_line_and_reads_to_the_end(gate):
    port, received = gate
    assert runtime_api.ask(port, SECRET, "echo show info") == "show info\n\n"
    assert received == [SECRET.encode() + b"echo show info\n"]


def test_a_refused_secret_or_no_listener_is_refused_not_an_answer(gate):
    port, _ = gate
    with pytest.raises(runtime_api.RuntimeApiRefused) as refused:
        runtime_api.ask(port, "x" * haproxy.ADMIN_SECRET_LENGTH, "echo hi")
    assert "x" * 8 not in str(refused.value)  # the secret is never in an error
    free = socket.create_server(("127.0.0.1", 0))
    unused = free.getsockname()[1]
    free.close()
    with pytest.raises(runtime_api.RuntimeApiRefused):
        runtime_api.ask(unused, SECRET, "show info")


def test_a_command_is_one_line(gate):
    port, received = gate
    with pytest.raises(ValueError):
        runtime_api.ask(port, SECRET, "show info\nshutdown frontend service")
    assert received == []


@pytest.mark.parametrize(("docker_host", "local"), [
    (None, True), ("", True), ("unix:///var/run/docker.sock", True), ("unix:///run/x/docker.sock", True),
    ("tcp://127.0.0.1:2375", True), ("tcp://localhost:2375", True), ("tcp://[::1]:2375", True),
    ("tcp://10.1.2.3:2376", False), ("ssh://ops@build-host", False), ("tcp://docker.example:2376", False),
])
def test_whether_the_engine_is_on_this_host(docker_host, local):
    assert runtime_api.engine_is_local(docker_host) is local


def _ref(instance: Backend, name: str) -> ServiceRef:
    record = instance.store.get(name)
    assert record is not None
    return ServiceRef(record.name, record.uid)


def _counting_exec(balancers: Balancers) -> list[list[str]]:
    calls: list[list[str]] = []
    original = balancers.engine.exec
    mine = threading.get_ident()  # the test's own calls: the backend's workers may exec meanwhile

    def exec_(container, argv):
        if threading.get_ident() == mine:
            calls.append(argv)
        return original(container, argv)

    balancers.engine.exec = exec_  # type: ignore[method-assign]
    return calls


async def test_a_balancer_on_this_host_is_asked_over_the_loopback_without_docker_exec(backend, api):
    await api.post("/services/create", json=web_body("short", 1, HealthCheckInterval=1, HealthCheckRise=1))
    await wait_status(api, "short", "active")
    balancers = backend.reconciler.balancers
    [primary] = backend.driver.balancers(_ref(backend, "short"))
    execs = _counting_exec(balancers)
    info = balancers._ask(primary, "show info")
    assert "Pid:" in info and execs == []
    # A balancer whose runtime API this path does not reach (here: a secret it does not take, as a
    # balancer of an engine in another network namespace would refuse) is asked through the engine.
    balancers._secrets[primary.id] = "\t" * haproxy.ADMIN_SECRET_LENGTH
    assert "Pid:" in balancers._ask(primary, "show info")
    assert len(execs) == 1 and primary.id in balancers._exec_only
    assert "Pid:" in balancers._ask(primary, "show info")
    assert len(execs) == 2  # straight to the engine from then on


async def test_a_restarted_backend_reads_an_adopted_balancers_secret_once(tmp_path, docker_client):
    settings = make_settings(tmp_path / "data")
    with backend_to_restart(settings, docker_client) as first:
        async with client_for(first) as api:
            await api.post("/services/create", json=web_body("adopted", 1, HealthCheckInterval=1, HealthCheckRise=1))
            await wait_status(api, "adopted", "active")
        first.close()
        # The next backend on that data dir (not started: no worker of its own asks meanwhile).
        second = Backend(settings)
        try:
            balancers = second.reconciler.balancers
            [primary] = second.driver.balancers(_ref(second, "adopted"))
            execs = _counting_exec(balancers)
            for _ in range(3):
                assert "Pid:" in balancers._ask(primary, "show info")
            assert execs == [["busybox", "cat", haproxy.ADMIN_SECRET_PATH]]
        finally:
            second.close()
