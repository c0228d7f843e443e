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
from backend.balancer import Balancers, armed_slots
from backend.docker_driver import ServiceRef
from tests.conftest import backend_to_restart, client_for, make_settings, wait_status, web_body

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
    spec = first_checks.CheckSpec(http=False, timeout=1, rise=3, spacing=0.01, window=5)
    check, calls = scripted([False, True, True, False, True, True, True])
    assert first_checks.passes_rise("10.0.0.2:80", spec, threading.Event(), check=check)
    assert len(calls) == 7  # the failure after two passes started the count over


def test_checks_that_never_pass_give_up_at_the_window_and_leave_it_to_haproxy():
    spec = first_checks.CheckSpec(http=False, timeout=1, rise=2, spacing=0.01, window=0.3)
    check, calls = scripted([False])
    started = time.monotonic()
    assert not first_checks.passes_rise("10.0.0.2:80", spec, threading.Event(), check=check)
    assert time.monotonic() - started < 1.0
    assert len(calls) >= 3  # retried meanwhile (every RETRY_MS)


def test_after_the_fast_phase_failed_checks_come_at_haproxys_down_pace(monkeypatch):
    monkeypatch.setattr(first_checks, "FAST_PHASE", 0.1)
    spec = first_checks.CheckSpec(http=False, timeout=1, rise=1, window=0.1 + 3 * haproxy.DOWN_CHECK_MS / 1000)
    check, calls = scripted([False])
    assert not first_checks.passes_rise("10.0.0.2:80", spec, threading.Event(), check=check)
    fast = [b - a for a, b in zip(calls, calls[1:], strict=False) if b - calls[0] < 0.1]
    slow = [b - a for a, b in zip(calls, calls[1:], strict=False) if a - calls[0] > 0.1]
    assert fast and max(fast) < haproxy.DOWN_CHECK_MS / 1000 / 2
    assert slow and min(slow) >= haproxy.DOWN_CHECK_MS / 1000 * 0.9


def test_first_checks_stop_with_the_backend():
    stopping = threading.Event()
    stopping.set()
    check, calls = scripted([True])
    spec = first_checks.CheckSpec(http=False, timeout=1, rise=5, spacing=0.01, window=5)
    assert not first_checks.passes_rise("10.0.0.2:80", spec, stopping, check=check)
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


async def test_a_new_replica_is_admitted_by_its_first_checks_and_idle_spares_cost_no_checks(tmp_path, docker_client):
    """With a 60 s check interval HAProxy's own first check of a slot leaving maintenance may be a
    minute away: a replica added by a scale-up is in rotation within seconds only because the backend
    checked it at once (HAProxy logs that admission "changed from CLI"). The balancer, reached over
    this host's loopback, keeps its spare slots disabled (no armed spares checked every 250 ms)."""
    settings = make_settings(tmp_path / "data")
    with backend_to_restart(settings, docker_client) as backend:
        async with client_for(backend) as api:
            await api.post("/services/create", json=web_body("quick", 1, HealthCheckInterval=60))
            await wait_status(api, "quick", "active", timeout=20)
            record = backend.store.get("quick")
            balancers = backend.reconciler.balancers
            [primary] = backend.driver.balancers(ServiceRef(record.name, record.uid))
            spares = {slot: snap for slot, snap in _servers_state(balancers, primary).items() if slot != "s1"}
            assert spares and all(snap.state == "MAINT" for snap in spares.values()), spares
            started = time.monotonic()
            response = await api.post("/services/quick/update", json={"Replicas": 2})
            assert response.status_code == 200, response.text
            await wait_status(api, "quick", "active", timeout=20)
            assert time.monotonic() - started < 20  # HAProxy alone: up to 60 s
            logs = docker_client.containers.get(primary.id).logs().decode()
            assert "Server replicas/s2 is UP, changed from CLI" in logs
            assert _servers_state(balancers, primary)["s2"].state == "UP"


def test_balancers_arm_spare_slots_only_where_the_backend_cannot_make_first_checks():
    record = SimpleNamespace(spec=SimpleNamespace(Replicas=3))
    local = Balancers(engine=None, image="x", slots=64, on_health=lambda *_: None,  # type: ignore[arg-type]
                      direct_runtime_api=True)
    remote = Balancers(engine=None, image="x", slots=64, on_health=lambda *_: None,  # type: ignore[arg-type]
                       direct_runtime_api=False)
    try:
        container = SimpleNamespace(id="lb1", name="web-lb")
        assert local.armed(record) == 0  # type: ignore[arg-type]
        assert remote.armed(record) == armed_slots(record, 64) > 0  # type: ignore[arg-type]
        local._exec_only.add("lb1")  # its runtime API turned out not to be reachable from here
        assert local.armed(record, container) == armed_slots(record, 64)  # type: ignore[arg-type]
    finally:
        local.stop()
        remote.stop()
