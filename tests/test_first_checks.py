"""A newly gated replica's first `rise` checks, made by the backend at once (backend/first_checks.py):
the checks themselves against real sockets, the admission rule (only the gate that was checked), and
on the real engine a replica admitted without waiting for HAProxy's own DOWN-server clock."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from backend import first_checks, haproxy
from backend.balancer import Balancers
from backend.docker_driver import ServiceRef
from tests.conftest import backend_to_restart, client_for, eventually, make_settings, wait_status, web_body

TCP = first_checks.CheckSpec(http=False, timeout=0.3, rise=1)
HTTP = first_checks.CheckSpec(http=True, timeout=0.3, rise=1)


@contextlib.contextmanager
def listener(answer: bytes | None) -> Iterator[str]:
    """A loopback server: each connection gets `answer` (None: accepted and never answered)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if answer is None:
                held.append(connection)
                continue
            with connection:
                connection.settimeout(1)
                with contextlib.suppress(OSError):
                    connection.recv(1024)
                    connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()
        for connection in held:
            connection.close()


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"  # nobody listens once it is closed


def test_a_tcp_check_passes_when_the_replica_accepts_and_fails_when_refused():
    with listener(b"") as address:
        assert first_checks.check_once(address, TCP)
    assert not first_checks.check_once(closed_port(), TCP)


@pytest.mark.parametrize(("answer", "passes"), [
    (b"HTTP/1.0 200 OK\r\n\r\nok", True),
    (b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", True),
    (b"HTTP/1.0 404 Not Found\r\n\r\n", False),
    (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", False),
    (b"SSH-2.0-OpenSSH_9.2\r\n", False),
    (b"", False),
])
def test_an_http_check_passes_on_2xx_and_3xx_only_as_haproxys_httpchk(answer, passes):
    with listener(answer) as address:
        assert first_checks.check_once(address, HTTP) is passes


def test_an_http_check_of_a_replica_that_never_answers_fails_within_timeout_check():
    with listener(None) as address:
        started = time.monotonic()
        assert not first_checks.check_once(address, HTTP)
        assert time.monotonic() - started < HTTP.timeout + 0.5


def scripted(results: list[bool]):
    calls: list[float] = []

    def check(address: str, spec: first_checks.CheckSpec) -> bool:
        calls.append(time.monotonic())
        return results[len(calls) - 1] if len(calls) <= len(results) else results[-1]

    return check, calls


def test_rise_counts_consecutive_passes_only():
    spec = first_checks.CheckSpec(http=False, timeout=1, rise=3, spacing=0.01)
    check, calls = scripted([False, True, True, False, True, True, True])
    assert first_checks.passes_rise("10.0.0.2:80", spec, threading.Event(), window=5, check=check)
    assert len(calls) == 7  # the failure after two passes started the count over


def test_checks_that_never_pass_give_up_at_the_window_and_leave_it_to_haproxy():
    spec = first_checks.CheckSpec(http=False, timeout=1, rise=2, spacing=0.01)
    check, calls = scripted([False])
    started = time.monotonic()
    assert not first_checks.passes_rise("10.0.0.2:80", spec, threading.Event(), window=0.3, check=check)
    assert time.monotonic() - started < 1.0
    assert len(calls) >= 3  # retried meanwhile (every RETRY_MS)


def test_first_checks_stop_with_the_backend():
    stopping = threading.Event()
    stopping.set()
    check, calls = scripted([True])
    spec = first_checks.CheckSpec(http=False, timeout=1, rise=5, spacing=0.01)
    assert not first_checks.passes_rise("10.0.0.2:80", spec, stopping, window=5, check=check)
    assert len(calls) <= 1


def test_gated_slots_are_the_assigned_ones():
    commands = (
        haproxy.assign_slot_commands("s2", "10.0.0.2", 80)
        + haproxy.release_slot_commands("s3", armed=True)
        + haproxy.assign_slot_commands("s11", "10.0.0.3", 80)
        + haproxy.release_slot_commands("s4")
    )
    assert haproxy.gated_slots(commands) == {"s2", "s11"}
    assert haproxy.admit_slot_command("s2") == "set server replicas/s2 health up"


def test_a_slot_gated_again_meanwhile_is_not_admitted_by_the_older_checks():
    """The replica checked left, and a new container took its slot (maybe at the same address): the
    first checks of the old one must not put the new one in rotation."""
    balancers = Balancers(engine=None, image="x", slots=4, on_health=lambda *_: None,  # type: ignore[arg-type]
                          direct_runtime_api=True)
    sent: list[str] = []
    balancers._run = lambda container, commands: None  # type: ignore[method-assign]
    balancers._ask_direct = lambda container, command: sent.append(command) or "\n"  # type: ignore[method-assign]
    container = SimpleNamespace(id="lb1", name="web-lb")
    try:
        first = balancers._run_gating(container, haproxy.assign_slot_commands("s1", "10.0.0.2", 80))  # type: ignore[arg-type]
        second = balancers._run_gating(container, haproxy.assign_slot_commands("s1", "10.0.0.2", 80))  # type: ignore[arg-type]
        balancers._admit("s1", [(container, first["s1"])])  # type: ignore[list-item]
        assert sent == []
        balancers._admit("s1", [(container, second["s1"])])  # type: ignore[list-item]
        assert sent == ["set server replicas/s1 health up"]
        balancers.forget("lb1")  # removed: nothing is sent to it any more
        balancers._admit("s1", [(container, second["s1"])])  # type: ignore[list-item]
        assert sent == ["set server replicas/s1 health up"]
    finally:
        balancers.stop()


def _servers_state(balancers: Balancers, primary) -> dict[str, haproxy.ServerSnapshot]:
    return haproxy.parse_servers_state(balancers._ask(primary, haproxy.SHOW_SERVERS_STATE))


async def test_a_new_replica_is_admitted_by_its_first_checks_not_haproxys_down_clock(tmp_path, docker_client, monkeypatch):
    """The balancer's own clock for a DOWN slot is made a minute here: a replica added by a scale-up
    is in rotation within seconds only because the backend checked it at once (HAProxy logs that
    admission "changed from CLI"), and it answers through the service address."""
    monkeypatch.setattr(haproxy, "DOWN_CHECK_MS", 60_000)
    settings = make_settings(tmp_path / "data")
    with backend_to_restart(settings, docker_client) as backend:
        async with client_for(backend) as api:
            await api.post("/services/create", json=web_body("quick", 1, HealthCheckInterval=1))
            await wait_status(api, "quick", "active")
            record = backend.store.get("quick")
            balancers = backend.reconciler.balancers
            [primary] = backend.driver.balancers(ServiceRef(record.name, record.uid))
            # The armed spare s2 has failed its startup checks: HAProxy's next check of it is a minute away.
            await eventually(lambda: _servers_state(balancers, primary)["s2"].state == "DOWN",
                             what="the armed spare s2 DOWN")
            started = time.monotonic()
            response = await api.post("/services/quick/update", json={"Replicas": 2})
            assert response.status_code == 200, response.text
            await wait_status(api, "quick", "active", timeout=20)
            assert time.monotonic() - started < 20  # HAProxy alone: up to 60 s
            logs = docker_client.containers.get(primary.id).logs().decode()
            assert "Server replicas/s2 is UP, changed from CLI" in logs
            assert _servers_state(balancers, primary)["s2"].state == "UP"
