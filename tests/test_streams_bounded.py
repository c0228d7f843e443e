"""Streams are bounded, over a real TCP socket on the real engine: a slow `logs?follow` client costs
a bounded buffer (the oldest lines dropped, with a marker line), every thread and Docker stream ends
when the client goes (also a client gone before its stream opened), plain `logs` has a bounded tail."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from backend.core import DEFAULT_LOG_TAIL, MAX_PENDING_LINES, LogFollower
from tests.conftest import eventually, wait_status, web_body
from tests.test_streams import tcp_api  # noqa: F401  (the fixture)

# About 4000 lines a second, each naming its number.
SPEW = ["sh", "-c", "/bin/serve & while true; do seq 1 200 | sed 's/^/spewed line /'; sleep 0.05; done"]


def follower_threads(replica: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"follow-{replica}" and t.is_alive()]


def raw_request(base_url: str, path: str) -> socket.socket:
    """An HTTP/1.1 GET on a socket with a small receive buffer, so not reading soon stalls the server."""
    address = urlsplit(base_url)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((address.hostname, address.port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return client


async def test_a_slow_follower_costs_a_bounded_buffer_and_gets_a_marker(tcp_api: httpx.AsyncClient, backend):  # noqa: F811
    await tcp_api.post("/services/create", json=web_body("spew", 1, Cmd=SPEW, StopSignal="SIGKILL"))
    await wait_status(tcp_api, "spew", "active", 60)
    (replica,) = (await tcp_api.get("/services/spew/containers")).json()

    client = raw_request(str(tcp_api.base_url), "/services/spew/logs?follow=true&tail=0")
    try:
        (follower,) = await eventually(backend.followers.live, 10, what="the follower to start")
        # The client reads nothing: the replica goes on writing, the server holds a bounded buffer.
        most = 0

        def overflowed() -> bool:
            nonlocal most
            most = max(most, follower.pending())
            return follower.dropped_total > 3 * MAX_PENDING_LINES

        await eventually(overflowed, 60, interval=0.02, what="the replica to outpace the client")
        assert most <= MAX_PENDING_LINES, most

        # Reading again: the lines that came meanwhile, with a marker where lines were dropped.
        received = b""

        def read_until_marker() -> bytes:
            nonlocal received
            client.settimeout(30)
            deadline = time.monotonic() + 60  # the replica never stops writing: bound the wait for the marker
            while b"lines dropped (client too slow)" not in received:
                assert time.monotonic() < deadline, "no marker within 60 s"
                chunk = client.recv(65536)
                assert chunk, "the server closed the stream"
                received += chunk
            return received

        await asyncio.to_thread(read_until_marker)
        marker = next(line for line in received.decode(errors="replace").splitlines() if "client too slow" in line)
        when, who, bar, *text = marker.split(" ")
        assert (who, bar) == ("-", "|") and int(text[1]) > 0, marker
        assert f"{replica['Name']} | spewed line" in received.decode(errors="replace")
    finally:
        client.close()
    # The client went: the follower's thread ends and its Docker stream is closed.
    await eventually(lambda: not backend.followers.live() and not follower_threads(replica["Name"]), 30,
                     what="the follower's threads to end")
    assert follower.open_streams == 0


async def test_a_client_gone_before_its_stream_opened_leaves_no_thread(tcp_api: httpx.AsyncClient, backend,  # noqa: F811
                                                                       monkeypatch):
    await tcp_api.post("/services/create", json=web_body("quiet", 1))  # httpd writes no log lines
    await wait_status(tcp_api, "quiet", "active", 60)
    (replica,) = (await tcp_api.get("/services/quiet/containers")).json()

    opening, may_open, closed = threading.Event(), threading.Event(), threading.Event()
    streams: list[ClosingRecorder] = []
    real_logs, real_close = backend.driver.logs, LogFollower.close

    def slow_logs(container_id, tail, follow=False):
        if not follow:
            return real_logs(container_id, tail, follow)
        opening.set()
        may_open.wait(30)  # the engine is slow to answer: the client leaves meanwhile
        streams.append(ClosingRecorder(real_logs(container_id, tail, follow)))
        return streams[-1]

    def recording_close(self):
        real_close(self)
        closed.set()

    monkeypatch.setattr(backend.driver, "logs", slow_logs)
    monkeypatch.setattr(LogFollower, "close", recording_close)
    client = raw_request(str(tcp_api.base_url), "/services/quiet/logs?follow=true")
    try:
        assert await asyncio.to_thread(opening.wait, 30), "the stream was never opened"
    finally:
        client.close()
    assert await asyncio.to_thread(closed.wait, 30), "the follower was not closed when its client went"
    may_open.set()
    await eventually(lambda: streams and not follower_threads(replica["Name"]), 30,
                     what="the thread that opened the stream to end")
    assert streams[0].closed


async def test_a_quiet_follower_ends_its_thread_and_docker_stream_when_the_client_goes(
    tcp_api: httpx.AsyncClient, backend  # noqa: F811
):
    """A replica that writes nothing: its thread is blocked reading the Docker stream, with no line to
    notice the client went by; closing that stream when the client goes is what ends it."""
    await tcp_api.post("/services/create", json=web_body("silent", 1))  # httpd writes no log lines
    await wait_status(tcp_api, "silent", "active", 60)
    (replica,) = (await tcp_api.get("/services/silent/containers")).json()
    client = raw_request(str(tcp_api.base_url), "/services/silent/logs?follow=true&tail=0")
    try:
        (follower,) = await eventually(backend.followers.live, 10, what="the follower to start")
        await eventually(lambda: follower.open_streams == 1, 30, what="its Docker stream to be open")
    finally:
        client.close()
    await eventually(lambda: not backend.followers.live() and not follower_threads(replica["Name"]), 30,
                     what="the follower's thread to end")
    assert follower.open_streams == 0


class ClosingRecorder:
    """A Docker stream that remembers being closed."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.closed = False

    def __iter__(self):
        return iter(self._stream)

    def close(self) -> None:
        self.closed = True
        self._stream.close()


async def test_stats_follower_ends_its_threads_when_the_client_goes(tcp_api: httpx.AsyncClient, backend):  # noqa: F811
    await tcp_api.post("/services/create", json=web_body("watched", 2))
    await wait_status(tcp_api, "watched", "active", 60)
    names = {c["Name"] for c in (await tcp_api.get("/services/watched/containers")).json()}
    async with tcp_api.stream("GET", "/services/watched/stats") as response:
        async for line in response.aiter_lines():
            if line.strip():
                break
        (follower,) = backend.followers.live()
        assert all(follower_threads(name) for name in names)
    await eventually(lambda: not backend.followers.live() and not any(follower_threads(n) for n in names), 30,
                     what="the stats threads to end")
    assert follower.open_streams == 0


async def test_plain_logs_answer_a_bounded_tail_by_default(api: httpx.AsyncClient):
    lines = DEFAULT_LOG_TAIL + 500
    await api.post("/services/create", json=web_body(
        "wordy", 1, Cmd=["sh", "-c", f"seq 1 {lines} | sed 's/^/number /'; exec /bin/serve"]))
    await wait_status(api, "wordy", "active", 60)

    async def all_written():
        text = (await api.get("/services/wordy/logs", params={"tail": lines + 10})).text
        return text if f"| number {lines}\n" in text else None

    everything = await eventually(all_written, 30, what="every line to be written")
    assert everything.count("| number ") == lines  # asked for: all of them
    default = (await api.get("/services/wordy/logs")).text.splitlines()
    assert len(default) == DEFAULT_LOG_TAIL
    assert default[0].endswith(f"| number {lines - DEFAULT_LOG_TAIL + 1}") and default[-1].endswith(f"| number {lines}")
    too_many = await api.get("/services/wordy/logs", params={"tail": 10**9})
    assert too_many.status_code == 400 and too_many.json()["errors"][0]["field"] == "tail"
