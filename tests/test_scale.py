"""Many services at once (issue 9 point 5): the balancers' health logs are read by one shared thread,
not one each, and a replica's health is never lost to a race between its gate and its log line.

Unit tests check the shared reader on socket pairs and the order of the gate against the health board
(a fake engine whose log line arrives before the gate command's exec returns); the real-engine test
checks that many balancers cost one reader thread and that health changes still arrive through it.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from docker.models.containers import Container

from backend import haproxy
from backend.balancer import LABEL_ADDRESS, LABEL_ADMIN_PORT, LABEL_FRONT, Balancers, SharedLogReader
from backend.engines.docker import DockerLogSource
from backend.models import ServiceSpec
from backend.store import ServiceRecord
from tests.conftest import client_for, eventually, wait_status, web_body

# -- the shared reader (no engine) ----------------------------------------------------------------


class PairSource:
    """A log source over one end of a socket pair: raw lines, no framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.pending = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> tuple[list[bytes], bool]:
        ended = False
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            if not data:
                ended = True
                break
            self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        return lines, ended

    def close(self) -> None:
        self.sock.close()


def wait_until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_one_thread_reads_many_streams_line_by_line_and_hears_each_end():
    reader = SharedLogReader(name="test-logs")
    streams = 50
    got: dict[int, list[bytes]] = {i: [] for i in range(streams)}
    ended: set[int] = set()
    writers = []
    threads_before = threading.active_count()
    try:
        for index in range(streams):
            ours, theirs = socket.socketpair()
            writers.append(ours)
            reader.add(
                PairSource(theirs),
                lambda lines, index=index: got[index].extend(lines),
                lambda index=index: ended.add(index),
            )
        assert threading.active_count() == threads_before + 1  # one reader, whatever the count
        assert reader.count() == streams
        for index, writer in enumerate(writers):
            writer.sendall(f"first {index}\nsecond ".encode())  # a line may arrive in pieces
        for index, writer in enumerate(writers):
            writer.sendall(f"{index}\n".encode())
        wait_until(lambda: all(len(lines) == 2 for lines in got.values()), "every line")
        assert got[7] == [b"first 7", b"second 7"]
        for writer in writers[:10]:
            writer.close()
        wait_until(lambda: ended == set(range(10)), "the closed streams' ends")
        assert reader.count() == streams - 10
        writers[20].sendall(b"still read\n")
        wait_until(lambda: got[20][-1:] == [b"still read"], "a line after others ended")
    finally:
        reader.close()
        for writer in writers:
            writer.close()


# -- the gate against the health board (a fake engine) --------------------------------------------


class RacingEngine:
    """An engine on which HAProxy checks a newly assigned replica at once and the log follower reads
    its UP line before the `docker exec` that sent the gate command returns (seen on a loaded machine
    with 60 services: the UP line within 20-150 ms, the exec's return later)."""

    def __init__(self) -> None:
        self.balancers: Balancers | None = None
        self.uid = ""

    def exec(self, container: Container, argv: list[str]) -> tuple[int, bytes]:
        line = argv[-1]
        if "set server replicas/s1 health down" in line or "set server replicas/s1 addr" in line:
            assert self.balancers is not None
            for text in (
                "Server replicas/s1 is DOWN (leaving forced drain).",
                "Health check for server replicas/s1 succeeded, reason: Layer4 check passed, check duration: 0ms, status: 1/1 UP.",
                "Server replicas/s1 is UP. 1 active and 0 backup servers online.",
            ):
                self.balancers._take_health_lines("web", self.uid, [text.encode()])
        return 0, b"\n"

    def copy_in(self, container: Container, path: str, archive: bytes) -> bool:
        return True


def test_a_replica_checked_up_before_its_gate_command_returns_is_up():
    engine = RacingEngine()
    heard: list[tuple[str, str]] = []
    balancers = Balancers(engine, "lb:1", 3, lambda name, slot, health: heard.append((slot, health.health)))  # type: ignore[arg-type]
    engine.balancers = balancers
    spec = ServiceSpec.model_validate({"Name": "web", "Image": "x:1", "ServicePort": 80, "Replicas": 1})
    record = ServiceRecord(
        name="web", uid="u1", spec=spec, revision=1, generation=1, ip="127.0.0.5", fip="", status="scaling",
        message="", created="", containers=None, deleting=False, keep=False,
    )
    engine.uid = record.uid
    container = Container(attrs={"Id": "lb1", "Name": "/web-lb", "Config": {"Labels": {
        LABEL_FRONT: "ip", LABEL_ADDRESS: "127.0.0.5", LABEL_ADMIN_PORT: "20001",
    }}})
    # A balancer just made with no replica: every slot spare.
    balancers._started["lb1"] = haproxy.started_state(haproxy.BalancerConfig(
        service="web", protocol="tcp", algorithm="roundrobin", session_affinity=False, listen="127.0.0.5:80",
        admin_port=20001, container_port=80, health_interval=1, health_fall=2, health_rise=1, slots=3,
    ))
    balancers.set_servers(record, [container], {"s1": "10.1.0.2:80"}, {"s1": "replica1"})
    known = balancers.health(record.uid, "s1", "replica1")
    assert known is not None and known.health == "UP", known
    assert ("s1", "UP") in heard


# -- the real engine ----------------------------------------------------------------------------


async def test_many_balancers_share_one_log_thread_and_health_changes_still_arrive(backend_factory, docker_client):
    backend = backend_factory(max_replicas=2, workers=4, resync_seconds=30)
    names = [f"logs{i}" for i in range(8)]
    async with client_for(backend) as api:
        for name in names:
            body = web_body(name, 1, Protocol="http", HealthCheckInterval=1, HealthCheckRise=1, HealthCheckFall=1)
            assert (await api.post("/services/create", json=body)).status_code == 201
        for name in names:
            await wait_status(api, name, "active", timeout=180)
        balancers = backend.reconciler.balancers
        assert balancers.followed() == len(names)
        readers = [t for t in threading.enumerate() if t.name == "balancer-logs"]
        per_balancer = [t for t in threading.enumerate() if t.name.startswith("health-")]
        assert len(readers) == 1 and per_balancer == []
        # A health change still arrives through the shared reader: a paused replica (its kernel still
        # accepts connections: an http check) goes DOWN, and back UP.
        record = backend.store.get(names[3])
        assert record is not None
        replica = docker_client.containers.get(record.containers[0])

        def health() -> str:
            known = balancers.health(record.uid, "s1", replica.id)
            return known.health if known else ""

        replica.pause()
        try:
            await eventually(lambda: health() == "DOWN", timeout=60, what="the paused replica DOWN")
        finally:
            replica.unpause()
        await eventually(lambda: health() == "UP", timeout=60, what="the replica UP again")




def test_a_docker_log_source_undoes_stream_frames_that_arrive_in_pieces():
    ours, theirs = socket.socketpair()

    def frame(text: bytes, stream: int = 1) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(text).to_bytes(4, "big") + text

    data = frame(b"one\ntw") + frame(b"o\n") + frame(b"three\n")
    source = DockerLogSource(theirs, data[:5], framed=True)  # the body's start came with the headers
    try:
        ours.sendall(data[5:13])
        assert wait_for_lines(source) == []  # 13 bytes: not one whole frame yet
        ours.sendall(data[13:])
        lines = wait_for_lines(source, want=3)
        assert lines == [b"one", b"two", b"three"]
        ours.close()
        deadline = time.monotonic() + 5
        while not source.read()[1]:
            assert time.monotonic() < deadline, "the end was not seen"
            time.sleep(0.01)
    finally:
        source.close()
        ours.close()


def wait_for_lines(source: DockerLogSource, want: int = 0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while True:
        got += source.read()[0]
        if len(got) >= want and (want or time.monotonic() > deadline - 4.9):
            return got
        assert time.monotonic() < deadline, f"only {got}"
        time.sleep(0.01)


class ThreadOnlyEngine:
    """An engine with no selectable log stream (open_log answers None): its log on a thread."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def open_log(self, container: Container, since: float) -> None:
        return None

    def follow_log(self, container: Container, since: float) -> Any:
        return iter(self.chunks)


def test_an_engine_without_a_selectable_log_stream_is_followed_on_a_thread():
    line = b"Health check for server replicas/s1 succeeded, reason: Layer4 check passed, check duration: 0ms, status: 1/1 UP.\n"
    engine = ThreadOnlyEngine([line[:30], line[30:]])
    heard: list[tuple[str, str]] = []
    balancers = Balancers(engine, "lb:1", 3, lambda name, slot, health: heard.append((slot, health.health)))  # type: ignore[arg-type]
    spec = ServiceSpec.model_validate({"Name": "web", "Image": "x:1", "ServicePort": 80, "Replicas": 1})
    record = ServiceRecord(
        name="web", uid="u1", spec=spec, revision=1, generation=1, ip="127.0.0.5", fip="", status="scaling",
        message="", created="", containers=None, deleting=False, keep=False,
    )
    container = Container(attrs={"Id": "lb1", "Name": "/web-lb", "Config": {"Labels": {LABEL_FRONT: "ip"}}})
    balancers._started["lb1"] = {"s1": haproxy.ServerSnapshot("s1", "10.1.0.2:80", "UP", False, 0)}
    balancers._follow(record, container)
    wait_until(lambda: ("s1", "UP") in heard and ("", "") in heard, "UP, then the stream's end")
    assert balancers.followed() == 0  # ended: the next look follows it again
